// The conversation on the page: a bubble per message (the user's text as typed, the
// assistant's reply as rendered parts and steps), its meta line (tokens, tokens/s, time),
// reading a server's event stream (SSE) into JSON objects, and the agent's events turned
// into the reply's steps.
(function () {
  const CF = (window.CF = window.CF || {});

  function bubble(container, role) {
    const div = document.createElement("div");
    div.className = "msg " + role;
    const who = document.createElement("div");
    who.className = "role";
    who.textContent = role === "user" ? "You" : role === "error" ? "Error" : "Assistant";
    const body = document.createElement("div");
    body.className = "body";
    div.append(who, body);
    container.appendChild(div);
    return div;
  }

  function metaText(meta) {
    if (!meta) return "";
    const bits = [];
    if (meta.completion_tokens) bits.push(meta.completion_tokens + " tokens");
    if (meta.tokens_per_second) bits.push(meta.tokens_per_second.toFixed(1) + " tokens/s");
    if (meta.seconds) bits.push(meta.seconds.toFixed(1) + " s");
    if (meta.rounds) bits.push(meta.rounds + (meta.rounds === 1 ? " round" : " rounds"));
    if (meta.stopped) bits.push("stopped");
    return bits.join(" · ");
  }

  function showMeta(div, meta) {
    let line = div.querySelector(".meta");
    const text = metaText(meta);
    if (!text) return;
    if (!line) { line = document.createElement("div"); line.className = "meta"; div.appendChild(line); }
    line.textContent = text;
  }

  /** A saved message, drawn finished (its steps collapsed). */
  function drawMessage(container, m) {
    if (m.role === "user") {
      const div = bubble(container, "user");
      div.querySelector(".body").textContent = m.content;
    } else if (m.role === "assistant") {
      const div = bubble(container, "assistant");
      const body = div.querySelector(".body");
      const parts = m.steps && m.steps.length ? m.steps : [{ kind: "text", text: m.content || "" }];
      const steps = new CF.Steps(body, parts.map((p) => Object.assign({}, p)));
      steps.collapse();
      steps.flush();
      showMeta(div, m.meta);
      div.dataset.done = "true";
    }
  }

  /** The JSON objects of a ``text/event-stream`` response, until ``data: [DONE]``. */
  async function* readEvents(response) {
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += decoder.decode(value, { stream: true });
      let at;
      while ((at = buf.indexOf("\n\n")) >= 0) {
        const block = buf.slice(0, at);
        buf = buf.slice(at + 2);
        for (const line of block.split("\n")) {
          if (!line.startsWith("data:")) continue;
          const data = line.slice(5).trim();
          if (data === "[DONE]") return;
          yield JSON.parse(data);
        }
      }
    }
  }

  /** A streamed chat answer's meta: its time and, with the usage, its decode speed (the
   * tokens after the first over the time they took to stream). Times from performance.now(). */
  function streamMeta(started, first, last, usage) {
    const meta = { seconds: ((last || performance.now()) - started) / 1000 };
    if (usage) {
      meta.completion_tokens = usage.completion_tokens;
      const span = first !== null && last > first ? (last - first) / 1000 : 0;
      meta.tokens_per_second = span > 0 && usage.completion_tokens > 1
        ? (usage.completion_tokens - 1) / span
        : meta.seconds > 0 ? usage.completion_tokens / meta.seconds : 0;
    }
    return meta;
  }

  // A ```python block at the end of a text part: the code step shows the same code.
  const FENCE = /```(?:python|py|python3)[ \t]*\n[\s\S]*?(?:\n```|$)\s*$/;

  /** One /ui/agent event applied to an agent reply's steps; returns the event when it is
   * the final answer (the steps are then collapsed). */
  function applyAgentEvent(steps, ev) {
    const parts = steps.parts;
    const last = () => parts[parts.length - 1];
    const lastOf = (kind) => { for (let i = parts.length - 1; i >= 0; i--) if (parts[i].kind === kind) return parts[i]; return null; };
    const codeStep = () => lastOf("code") || steps.add({ kind: "code", code: "", output: null, images: [] });
    if (ev.type === "text") {
      const p = last() && last().kind === "text" ? last() : steps.add({ kind: "text", text: "" });
      p.text += ev.text;
      steps.update(p);
    } else if (ev.type === "tool_call") {
      steps.add({ kind: "tool", id: ev.id, name: ev.name, arguments: ev.arguments, result: null });
    } else if (ev.type === "tool_result") {
      const p = parts.find((x) => x.kind === "tool" && x.id === ev.id && !x.result) || lastOf("tool")
        || steps.add({ kind: "tool", id: ev.id, name: ev.name, arguments: {}, result: null });
      p.result = { content: ev.content, is_error: ev.is_error, truncated: ev.truncated, elapsed: ev.elapsed };
      steps.update(p);
    } else if (ev.type === "code") {
      // The code arrived as text too (a ```python block): show it once, as the code step.
      const t = last();
      if (t && t.kind === "text" && FENCE.test(t.text)) {
        t.text = t.text.replace(FENCE, "");
        if (t.text.trim()) steps.update(t); else steps.remove(t);
      }
      steps.add({ kind: "code", code: ev.code, output: null, error: false, timed_out: false, images: [] });
    } else if (ev.type === "image") {
      const p = codeStep();
      p.images.push(ev.png);
      steps.update(p);
    } else if (ev.type === "output") {
      const p = codeStep();
      Object.assign(p, { output: ev.text, error: ev.error, timed_out: ev.timed_out });
      steps.update(p);
    } else if (ev.type === "final") {
      if (ev.stopped_by_limit) steps.add({ kind: "limit", text: ev.text });
      steps.collapse();
      return ev;
    } else if (ev.type === "error") {
      steps.add({ kind: "error", text: ev.message });
    }
    return null;
  }

  CF.Transcript = { bubble, metaText, showMeta, drawMessage, readEvents, streamMeta, applyAgentEvent };
})();
