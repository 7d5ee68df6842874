// The chatforge web UI: talks to this server's OpenAI-compatible API with streaming
// (Chat mode) or to /ui/agent (Tool and Code Interpreter modes: the agent loop runs on the
// server, one agent per conversation id; /ui/upload puts files into its code session).
(function () {
  const $ = (id) => document.getElementById(id);
  const state = { messages: [], controller: null, auth: false, files: [], conversation: "" };

  function params() {
    return {
      temperature: +$("temperature").value,
      top_p: +$("top_p").value,
      repetition_penalty: +$("repetition_penalty").value,
      max_tokens: +$("max_tokens").value || 512,
    };
  }
  function headers() {
    const h = { "Content-Type": "application/json" };
    const key = $("api-key").value || localStorage.getItem("chatforge-key") || "";
    if (key) h["Authorization"] = "Bearer " + key;
    return h;
  }
  function conversation() {
    const sys = $("system").value.trim();
    return (sys ? [{ role: "system", content: sys }] : []).concat(state.messages);
  }

  function bubble(role) {
    const div = document.createElement("div");
    div.className = "msg " + role;
    div.innerHTML = '<div class="role">' + (role === "user" ? "You" : role === "error" ? "Error" : "Assistant") + '</div><div class="body"></div>';
    $("messages").appendChild(div);
    return div;
  }
  function scroll() { const m = $("messages"); m.scrollTop = m.scrollHeight; }
  function step(container, title, html, open) {
    const d = document.createElement("details");
    d.className = "step";
    if (open) d.open = true;
    d.innerHTML = "<summary>" + escapeHtml(title) + "</summary>" + html;
    container.appendChild(d);
    return d;
  }

  function redraw() {
    $("messages").innerHTML = "";
    for (const m of state.messages) {
      if (m.role === "user") bubble("user").querySelector(".body").innerHTML = renderMarkdown(m.content);
      else if (m.role === "assistant") {
        const b = bubble("assistant").querySelector(".body");
        if (m.parts) { renderParts(b, m.parts); continue; }
        b.innerHTML = renderMarkdown(m.content || "");
        for (const c of m.tool_calls || []) step(b, "🔧 " + c.function.name, "<pre><code>" + escapeHtml(c.function.arguments) + "</code></pre>");
      }
    }
  }

  async function* sse(response) {
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += decoder.decode(value, { stream: true });
      let at;
      while ((at = buf.indexOf("\n\n")) >= 0) {
        const block = buf.slice(0, at); buf = buf.slice(at + 2);
        for (const line of block.split("\n")) {
          if (!line.startsWith("data:")) continue;
          const data = line.slice(5).trim();
          if (data === "[DONE]") return;
          yield JSON.parse(data);
        }
      }
    }
  }

  async function failed(response) {
    let text = response.status + " " + response.statusText;
    try { text = (await response.json()).error.message; } catch (e) { /* not JSON */ }
    if (response.status === 401) $("key-row").hidden = false;
    throw new Error(text);
  }

  async function runChat(body, reply) {
    const req = Object.assign({ model: "default", messages: conversation(), stream: true }, params());
    const response = await fetch("/v1/chat/completions", { method: "POST", headers: headers(), body: JSON.stringify(req), signal: state.controller.signal });
    if (!response.ok) await failed(response);
    const calls = [];
    for await (const chunk of sse(response)) {
      if (chunk.error) throw new Error(chunk.error.message);
      const delta = (chunk.choices[0] || {}).delta || {};
      if (delta.content) { reply.content += delta.content; body.innerHTML = renderMarkdown(reply.content); scroll(); }
      for (const tc of delta.tool_calls || []) {
        if (!calls[tc.index]) calls[tc.index] = { id: tc.id, type: "function", function: { name: tc.function.name, arguments: "" } };
        calls[tc.index].function.arguments += tc.function.arguments || "";
      }
    }
    if (calls.length) {
      reply.tool_calls = calls;
      for (const c of calls) step(body, "🔧 " + c.function.name, "<pre><code>" + escapeHtml(c.function.arguments) + "</code></pre>");
    }
  }

  // -- Tool and Code Interpreter modes: the agent runs on the server (/ui/agent) ----------
  // A reply is a list of parts: text, tool steps (call + result), code steps (code,
  // output, images) and notes; each part renders to one node, replaced as it grows.
  function partNode(p) {
    const el = document.createElement(p.kind === "tool" ? "details" : "div");
    if (p.kind === "text") {
      el.className = "part text";
      el.innerHTML = renderMarkdown(p.text);
    } else if (p.kind === "tool") {
      el.className = "step tool" + (p.result && p.result.is_error ? " failed" : "");
      const status = !p.result ? " · running…" : p.result.is_error ? " · error" : " · done";
      el.innerHTML = "<summary>🔧 " + escapeHtml(p.name) + status + "</summary>" +
        '<div class="label">Arguments</div><pre><code class="language-json">' + escapeHtml(JSON.stringify(p.arguments, null, 2)) + "</code></pre>" +
        (p.result ? '<div class="label">Result' + (p.result.truncated ? " (truncated)" : "") + '</div><pre class="output">' + escapeHtml(p.result.content) + "</pre>" : "");
    } else if (p.kind === "code") {
      el.className = "step code" + (p.error ? " failed" : "");
      el.innerHTML = '<div class="label">🐍 Code</div><pre><code class="language-python">' + escapeHtml(p.code) + "</code></pre>" +
        (p.output === null ? '<div class="label running">running…</div>' :
          '<div class="label">Output' + (p.timed_out ? " (timed out)" : "") + '</div><pre class="output">' + escapeHtml(p.output) + "</pre>");
      for (const png of p.images) {
        const img = document.createElement("img");
        img.alt = "plot"; img.src = "data:image/png;base64," + png;
        el.appendChild(img);
      }
    } else {
      el.className = "part note " + p.kind;
      el.textContent = p.text;
    }
    return el;
  }
  function renderParts(body, parts) {
    body.innerHTML = "";
    for (const p of parts) { p.node = partNode(p); body.appendChild(p.node); }
  }
  function update(body, p) {
    const open = p.node && p.node.open;
    const node = partNode(p);
    if (open) node.open = true;
    if (p.node && p.node.parentNode === body) body.replaceChild(node, p.node); else body.appendChild(node);
    p.node = node;
  }
  const FENCE = /```(?:python|py|python3)[ \t]*\n[\s\S]*?(?:\n```|$)\s*$/;

  async function runAgent(mode, body, reply) {
    reply.parts = [];
    const parts = reply.parts;
    const history = state.messages.slice(0, -1).map((m) => ({ role: m.role, content: m.content || "" }));
    const req = {
      conversation: state.conversation, mode, query: state.messages[state.messages.length - 1].content,
      history, system: $("system").value.trim(), params: params(), max_rounds: +$("max_rounds").value || undefined,
    };
    const response = await fetch("/ui/agent", { method: "POST", headers: headers(), body: JSON.stringify(req), signal: state.controller.signal });
    if (!response.ok) await failed(response);
    const last = () => parts[parts.length - 1];
    const add = (p) => { parts.push(p); update(body, p); return p; };
    const lastOf = (kind) => { for (let i = parts.length - 1; i >= 0; i--) if (parts[i].kind === kind) return parts[i]; return null; };
    for await (const ev of sse(response)) {
      if (ev.type === "text") {
        const p = last() && last().kind === "text" ? last() : add({ kind: "text", text: "" });
        p.text += ev.text; update(body, p);
      } else if (ev.type === "tool_call") {
        add({ kind: "tool", id: ev.id, name: ev.name, arguments: ev.arguments, result: null });
      } else if (ev.type === "tool_result") {
        const p = parts.find((x) => x.kind === "tool" && x.id === ev.id) || lastOf("tool") || add({ kind: "tool", id: ev.id, name: ev.name, arguments: {}, result: null });
        p.result = ev; update(body, p);
      } else if (ev.type === "code") {
        // The code arrived as text too (a ```python block): show it once, as the code step.
        const t = last();
        if (t && t.kind === "text" && FENCE.test(t.text)) {
          t.text = t.text.replace(FENCE, "");
          if (t.text.trim()) update(body, t); else { parts.pop(); t.node.remove(); }
        }
        add({ kind: "code", code: ev.code, output: null, error: false, timed_out: false, images: [] });
      } else if (ev.type === "image") {
        const p = lastOf("code") || add({ kind: "code", code: "", output: "", images: [] });
        p.images.push(ev.png); update(body, p);
      } else if (ev.type === "output") {
        const p = lastOf("code") || add({ kind: "code", code: "", output: null, images: [] });
        Object.assign(p, { output: ev.text, error: ev.error, timed_out: ev.timed_out }); update(body, p);
      } else if (ev.type === "final") {
        reply.content = ev.text;
        if (ev.stopped_by_limit) add({ kind: "limit", text: ev.text });
      } else if (ev.type === "error") {
        add({ kind: "error", text: ev.message });
      }
      scroll();
    }
    if (!reply.content) reply.content = parts.filter((p) => p.kind === "text").map((p) => p.text).join("\n");
  }

  function newConversation() {
    const id = window.crypto && crypto.randomUUID ? crypto.randomUUID() : Date.now().toString(36) + Math.random().toString(36).slice(2);
    state.conversation = id;
    state.files = [];
    showFiles();
  }
  function showFiles() {
    $("files").innerHTML = state.files.map((f) => "<li>" + escapeHtml(f.name) + " <span class=muted>(" + f.size + " bytes)</span></li>").join("");
  }
  function readBase64(file) {
    return new Promise((resolve, reject) => {
      const r = new FileReader();
      r.onload = () => resolve(String(r.result).slice(String(r.result).indexOf(",") + 1));
      r.onerror = () => reject(r.error);
      r.readAsDataURL(file);
    });
  }
  async function uploadFiles(files) {
    $("upload-status").textContent = "";
    for (const f of files) {
      try {
        const req = { conversation: state.conversation, name: f.name, data: await readBase64(f) };
        const response = await fetch("/ui/upload", { method: "POST", headers: headers(), body: JSON.stringify(req) });
        if (!response.ok) await failed(response);
        state.files = (await response.json()).files;
        showFiles();
      } catch (err) {
        $("upload-status").textContent = f.name + ": " + err.message;
      }
    }
  }
  function showModeControls() {
    const mode = $("mode").value;
    $("upload-row").hidden = mode !== "code";
    $("agent-row").hidden = mode === "chat";
  }

  async function send(text) {
    if (state.controller) return;
    if (text !== null) state.messages.push({ role: "user", content: text });
    redraw();
    const reply = { role: "assistant", content: "" };
    const div = bubble("assistant");
    const body = div.querySelector(".body");
    state.controller = new AbortController();
    $("send").hidden = true; $("stop").hidden = false;
    try {
      const mode = $("mode").value;
      if (mode === "chat") await runChat(body, reply); else await runAgent(mode, body, reply);
      state.messages.push(reply);
    } catch (err) {
      if (err.name !== "AbortError") {
        div.className = "msg error";
        body.textContent = err.message;
      } else if (reply.content || (reply.parts && reply.parts.length)) state.messages.push(reply);
    } finally {
      state.controller = null;
      $("send").hidden = false; $("stop").hidden = true;
      div.dataset.done = "true";
      scroll();
    }
  }

  $("composer").addEventListener("submit", (e) => {
    e.preventDefault();
    const text = $("input").value.trim();
    if (!text) return;
    $("input").value = "";
    send(text);
  });
  $("input").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); $("composer").requestSubmit(); }
  });
  $("stop").addEventListener("click", () => state.controller && state.controller.abort());
  $("clear").addEventListener("click", () => {
    if (state.controller) state.controller.abort();
    // Forget the server-side agent (and its code session) too; a new id starts afresh.
    fetch("/ui/clear", { method: "POST", headers: headers(), body: JSON.stringify({ conversation: state.conversation }) }).catch(() => {});
    state.messages = [];
    newConversation();
    redraw();
  });
  $("retry").addEventListener("click", () => {
    while (state.messages.length && state.messages[state.messages.length - 1].role !== "user") state.messages.pop();
    if (state.messages.length) send(null);
  });
  for (const id of ["temperature", "top_p", "repetition_penalty"]) {
    $(id).addEventListener("input", () => { $(id + "-value").textContent = $(id).value; });
  }
  $("api-key").addEventListener("change", () => localStorage.setItem("chatforge-key", $("api-key").value));
  $("upload").addEventListener("change", async () => {
    await uploadFiles(Array.from($("upload").files));
    $("upload").value = "";
  });
  $("mode").addEventListener("change", showModeControls);
  newConversation();
  showModeControls();

  fetch("/ui/config").then((r) => r.json()).then((cfg) => {
    $("model-name").textContent = cfg.model;
    state.auth = cfg.auth;
    if (cfg.auth && !localStorage.getItem("chatforge-key")) $("key-row").hidden = false;
    for (const opt of $("mode").options) {
      if (!cfg.modes.includes(opt.value)) { opt.disabled = true; opt.textContent += " (needs the agent loop)"; }
    }
    if (cfg.modes.length === 1) $("mode-note").textContent = "Tool and Code Interpreter modes are not in this build.";
    if (cfg.max_rounds) $("max_rounds").value = cfg.max_rounds;
  });
})();
