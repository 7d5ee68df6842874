// The chatforge web UI: talks to this server's OpenAI-compatible API with streaming
// (Chat mode) or to /ui/agent (Tool and Code Interpreter modes, when the agent loop exists).
(function () {
  const $ = (id) => document.getElementById(id);
  const state = { messages: [], controller: null, auth: false, files: [] };

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

  async function runAgent(mode, body, reply) {
    const req = { mode, messages: conversation(), params: params(), files: state.files };
    const response = await fetch("/ui/agent", { method: "POST", headers: headers(), body: JSON.stringify(req), signal: state.controller.signal });
    if (!response.ok) await failed(response);
    let text = null;
    for await (const ev of sse(response)) {
      const kind = (ev.kind || ev.type || "").toLowerCase();
      if (kind.includes("delta") || kind.includes("text")) {
        if (text === null) { text = document.createElement("div"); body.appendChild(text); }
        reply.content += ev.delta || ev.text || "";
        text.innerHTML = renderMarkdown(reply.content);
      } else if (kind.includes("toolcall") || kind.includes("tool_call")) {
        step(body, "🔧 " + (ev.name || "tool call"), "<pre><code>" + escapeHtml(JSON.stringify(ev.arguments || ev, null, 2)) + "</code></pre>");
        text = null;
      } else if (kind.includes("result") || kind.includes("output")) {
        step(body, "📤 " + (ev.name || "output"), "<pre><code>" + escapeHtml(String(ev.content || ev.text || ev.output || "")) + "</code></pre>");
        text = null;
      } else if (kind.includes("code")) {
        step(body, "🐍 code", '<pre><code class="language-python">' + escapeHtml(ev.code || ev.content || "") + "</code></pre>", true);
        text = null;
      } else if (kind.includes("image")) {
        const img = document.createElement("img");
        img.src = "data:image/png;base64," + (ev.png || ev.data || ev.image);
        body.appendChild(img);
      }
      scroll();
    }
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
      } else if (reply.content) state.messages.push(reply);
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
  $("clear").addEventListener("click", () => { state.messages = []; state.files = []; redraw(); });
  $("retry").addEventListener("click", () => {
    while (state.messages.length && state.messages[state.messages.length - 1].role !== "user") state.messages.pop();
    if (state.messages.length) send(null);
  });
  for (const id of ["temperature", "top_p", "repetition_penalty"]) {
    $(id).addEventListener("input", () => { $(id + "-value").textContent = $(id).value; });
  }
  $("api-key").addEventListener("change", () => localStorage.setItem("chatforge-key", $("api-key").value));
  $("upload").addEventListener("change", async () => {
    for (const f of $("upload").files) {
      const data = btoa(String.fromCharCode(...new Uint8Array(await f.arrayBuffer())));
      state.files.push({ name: f.name, data });
    }
  });
  $("mode").addEventListener("change", () => { $("upload-row").hidden = $("mode").value !== "code"; });

  fetch("/ui/config").then((r) => r.json()).then((cfg) => {
    $("model-name").textContent = cfg.model;
    state.auth = cfg.auth;
    if (cfg.auth && !localStorage.getItem("chatforge-key")) $("key-row").hidden = false;
    for (const opt of $("mode").options) {
      if (!cfg.modes.includes(opt.value)) { opt.disabled = true; opt.textContent += " (needs the agent loop)"; }
    }
    if (cfg.modes.length === 1) $("mode-note").textContent = "Tool and Code Interpreter modes are not in this build.";
  });
})();
