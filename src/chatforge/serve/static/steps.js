// An agent reply (Tool and Code Interpreter modes) as a list of parts: text, tool steps
// (call + result), code steps (code, output, images) and notes. Each tool or code step is a
// <details> block: open while it runs, collapsed once the final answer arrives; long
// outputs and tracebacks are folded to their first lines with a "Show all" button.
(function () {
  const CF = (window.CF = window.CF || {});
  const FOLD_LINES = 12;
  const FOLD_CHARS = 1500;

  const ANSI = /\x1b\[[0-9;?]*[A-Za-z]/g;
  const clean = (s) => String(s == null ? "" : s).replace(ANSI, "");

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  /** A <pre> of `text`, folded to its first lines when long, with a button to show all. */
  function folded(text, cls) {
    const box = el("div", "fold");
    const pre = el("pre", cls);
    const lines = text.split("\n");
    const long = lines.length > FOLD_LINES + 3 || text.length > FOLD_CHARS + 200;
    if (!long) { pre.textContent = text; box.appendChild(pre); return box; }
    let head = lines.slice(0, FOLD_LINES).join("\n");
    if (head.length > FOLD_CHARS) head = head.slice(0, FOLD_CHARS);
    pre.textContent = head + "\n…";
    pre.classList.add("folded");
    const more = el("button", "show-all", "Show all (" + lines.length + " lines, " + text.length + " characters)");
    more.type = "button";
    more.addEventListener("click", () => { pre.textContent = text; pre.classList.remove("folded"); more.remove(); });
    box.append(pre, more);
    return box;
  }

  function codeView(text, lang) {
    const pre = el("pre");
    const code = el("code", "language-" + lang);
    pre.appendChild(code);
    const holder = el("div");
    holder.appendChild(pre);
    CF.codeBlock(code, text, lang);
    return holder.firstChild;
  }

  function lastLine(text) {
    const lines = clean(text).split("\n").map((l) => l.trim()).filter(Boolean);
    return lines.length ? lines[lines.length - 1] : "";
  }
  function short(s, n) { s = String(s).replace(/\s+/g, " ").trim(); return s.length > n ? s.slice(0, n - 1) + "…" : s; }

  function toolSummary(p) {
    const args = p.arguments && typeof p.arguments === "object" ? Object.values(p.arguments).map(String).join(", ") : "";
    let status = "running…";
    if (p.result) status = p.result.is_error ? "error" : "done" + (p.result.elapsed ? " in " + fmtSeconds(p.result.elapsed) : "");
    return p.name + (args ? "(" + short(args, 48) + ")" : "") + " · " + status;
  }
  function codeSummary(p) {
    const first = (p.code || "").split("\n").find((l) => l.trim()) || "";
    let status = "running…";
    if (p.output !== null && p.output !== undefined) {
      status = p.timed_out ? "timed out" : p.error ? "error: " + short(lastLine(p.output), 60) : "done";
    }
    return "python · " + status + (first ? " — " + short(first, 50) : "");
  }
  function summary(kind, text) {
    const s = el("summary");
    s.append(el("span", "badge", kind), " " + text);
    return s;
  }
  function fmtSeconds(s) { return s < 1 ? Math.round(s * 1000) + " ms" : s.toFixed(1) + " s"; }

  function fillTool(node, p) {
    node.className = "step tool" + (p.result && p.result.is_error ? " failed" : "") + (p.result ? "" : " running");
    node.replaceChildren(summary("tool", toolSummary(p)));
    node.appendChild(el("div", "label", "Arguments"));
    node.appendChild(codeView(JSON.stringify(p.arguments || {}, null, 2), "json"));
    if (p.result) {
      node.appendChild(el("div", "label", "Result" + (p.result.truncated ? " (truncated)" : "")));
      node.appendChild(folded(clean(p.result.content), "output" + (p.result.is_error ? " error" : "")));
    }
  }

  function fillCode(node, p) {
    const done = p.output !== null && p.output !== undefined;
    node.className = "step code" + (p.error || p.timed_out ? " failed" : "") + (done ? "" : " running");
    node.replaceChildren(summary("code", codeSummary(p)));
    if (p.code) node.appendChild(codeView(p.code, "python"));
    if (done) {
      node.appendChild(el("div", "label", p.timed_out ? "Output (timed out)" : p.error ? "Error" : "Output"));
      node.appendChild(folded(clean(p.output) || "(no output)", "output" + (p.error ? " error" : "")));
    }
    (p.images || []).forEach((png, i) => {
      const fig = el("figure", "plot");
      const img = el("img");
      img.alt = "plot " + (i + 1);
      img.src = "data:image/png;base64," + png;
      const link = el("a", "download", "Download PNG");
      link.href = img.src;
      link.download = "plot-" + (i + 1) + ".png";
      fig.append(img, link);
      node.appendChild(fig);
    });
  }

  /** The parts of one agent reply, drawn into `body` and kept up to date. */
  class Steps {
    constructor(body, parts) {
      this.body = body;
      this.parts = parts || [];
      this.nodes = new Map(); // part -> {node, live}
      for (const p of this.parts) this.update(p);
    }
    add(p) {
      // A new step: the earlier ones fold away so the page does not flood.
      if (p.kind === "tool" || p.kind === "code") this.collapse();
      this.parts.push(p);
      this.update(p);
      return p;
    }
    update(p) {
      let entry = this.nodes.get(p);
      if (!entry) {
        const node = el(p.kind === "tool" || p.kind === "code" ? "details" : "div");
        if (node.tagName === "DETAILS") node.open = true;
        entry = { node, live: null };
        this.nodes.set(p, entry);
        this.body.appendChild(node);
      }
      const node = entry.node;
      if (p.kind === "text") {
        node.className = "part text";
        if (!entry.live) entry.live = CF.live(node);
        entry.live.update(p.text);
      } else if (p.kind === "tool") fillTool(node, p);
      else if (p.kind === "code") fillCode(node, p);
      else { node.className = "part note " + p.kind; node.textContent = p.text; }
    }
    remove(p) {
      const entry = this.nodes.get(p);
      if (entry) entry.node.remove();
      this.nodes.delete(p);
      this.parts.splice(this.parts.indexOf(p), 1);
    }
    collapse() {
      for (const { node } of this.nodes.values()) if (node.tagName === "DETAILS") node.open = false;
    }
    flush() {
      for (const { live } of this.nodes.values()) if (live) live.flush();
    }
  }

  /** The parts as plain data (for saving): no DOM nodes. */
  function plain(parts) {
    return parts.map((p) => Object.assign({}, p));
  }

  Object.assign(CF, { Steps, plainSteps: plain, folded });
})();
