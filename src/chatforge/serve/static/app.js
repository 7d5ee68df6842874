// The chatforge web UI. Chat mode streams from this server's OpenAI-compatible API
// (/v1/chat/completions); Tool and Code Interpreter modes stream agent events from /ui/agent
// (the agent loop runs on the server, one per conversation id; /ui/upload puts files into
// its code session). Conversations are saved on the server (/ui/conversations) after each
// turn when it has a store, else kept in memory. Rendering: render.js and steps.js.
(function () {
  const CF = window.CF;
  const $ = (id) => document.getElementById(id);
  const state = {
    messages: [],      // {role, content, steps?, meta?}: what is saved
    id: null,          // conversation id (the store's, or a local one when there is no store)
    stored: false,     // whether `id` exists in the store
    title: "",
    list: [],
    controller: null,  // the running turn's AbortController
    running: null,     // the running turn's promise
    files: [],
    model: "",
  };
  const store = new CF.Conversations(headers);

  // -- Requests ---------------------------------------------------------------------------
  function headers() {
    const h = { "Content-Type": "application/json" };
    const key = $("api-key").value || localStorage.getItem("chatforge-key") || "";
    if (key) h["Authorization"] = "Bearer " + key;
    return h;
  }
  function params() {
    return {
      temperature: +$("temperature").value,
      top_p: +$("top_p").value,
      repetition_penalty: +$("repetition_penalty").value,
      max_tokens: +$("max_tokens").value || 512,
    };
  }
  async function failed(response) {
    let text = response.status + " " + response.statusText;
    try { text = (await response.json()).error.message; } catch (err) { /* not JSON */ }
    if (response.status === 401) askForKey();
    const error = new Error(text);
    error.status = response.status;
    throw error;
  }
  function askForKey() {
    $("key-row").hidden = false;
    $("settings").open = true;
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
  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  // -- Messages on the page ----------------------------------------------------------------
  function bubble(role) {
    const div = document.createElement("div");
    div.className = "msg " + role;
    const who = document.createElement("div");
    who.className = "role";
    who.textContent = role === "user" ? "You" : role === "error" ? "Error" : "Assistant";
    const body = document.createElement("div");
    body.className = "body";
    div.append(who, body);
    $("messages").appendChild(div);
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
  function drawMessage(m) {
    if (m.role === "user") {
      const div = bubble("user");
      div.querySelector(".body").textContent = m.content;
    } else if (m.role === "assistant") {
      const div = bubble("assistant");
      const body = div.querySelector(".body");
      const parts = m.steps && m.steps.length ? m.steps : [{ kind: "text", text: m.content || "" }];
      const steps = new CF.Steps(body, parts.map((p) => Object.assign({}, p)));
      steps.collapse();
      steps.flush();
      showMeta(div, m.meta);
      div.dataset.done = "true";
    }
  }
  function redraw() {
    $("messages").replaceChildren();
    for (const m of state.messages) drawMessage(m);
    scroll(true);
  }
  function scroll(force) {
    const box = $("messages");
    // Follow the stream only while the reader is at the bottom.
    if (force || box.scrollHeight - box.scrollTop - box.clientHeight < 120) box.scrollTop = box.scrollHeight;
  }
  function showSpeed(meta) {
    const rate = meta && meta.tokens_per_second;
    $("speed").textContent = rate ? rate.toFixed(1) + " tokens/s" : meta && meta.seconds ? meta.seconds.toFixed(1) + " s" : "";
  }

  // -- Chat mode: the OpenAI-compatible streaming API ---------------------------------------
  function apiMessages() {
    const sys = $("system").value.trim();
    const history = state.messages.map((m) => ({ role: m.role, content: m.content || "" }));
    return (sys ? [{ role: "system", content: sys }] : []).concat(history);
  }
  async function runChat(turn) {
    const req = Object.assign(
      { model: "default", messages: apiMessages(), stream: true, stream_options: { include_usage: true } },
      params(),
    );
    const started = performance.now();
    const response = await fetch("/v1/chat/completions", {
      method: "POST", headers: headers(), body: JSON.stringify(req), signal: turn.signal,
    });
    if (!response.ok) await failed(response);
    const text = turn.steps.add({ kind: "text", text: "" });
    const calls = [];
    let first = null, last = null, usage = null;
    for await (const chunk of sse(response)) {
      if (chunk.error) throw new Error(chunk.error.message);
      if (chunk.usage) usage = chunk.usage;
      const delta = ((chunk.choices || [])[0] || {}).delta || {};
      if (delta.content) {
        last = performance.now();
        if (first === null) first = last;
        text.text += delta.content;
        turn.steps.update(text);
        scroll();
      }
      for (const tc of delta.tool_calls || []) {
        if (!calls[tc.index]) calls[tc.index] = { kind: "tool", id: tc.id, name: tc.function.name, args: "", result: null };
        calls[tc.index].args += tc.function.arguments || "";
      }
    }
    for (const c of calls) {
      let args;
      try { args = JSON.parse(c.args || "{}"); } catch (err) { args = { arguments: c.args }; }
      turn.steps.add({ kind: "tool", id: c.id, name: c.name, arguments: args, result: null });
    }
    const meta = { seconds: ((last || performance.now()) - started) / 1000 };
    if (usage) {
      meta.completion_tokens = usage.completion_tokens;
      // Decode speed: the tokens after the first over the time they took to stream.
      const span = first !== null && last > first ? (last - first) / 1000 : 0;
      meta.tokens_per_second = span > 0 && usage.completion_tokens > 1
        ? (usage.completion_tokens - 1) / span
        : meta.seconds > 0 ? usage.completion_tokens / meta.seconds : 0;
    }
    turn.reply.content = text.text;
    turn.reply.meta = meta;
  }

  // -- Tool and Code Interpreter modes: the agent runs on the server (/ui/agent) ----------
  const FENCE = /```(?:python|py|python3)[ \t]*\n[\s\S]*?(?:\n```|$)\s*$/;

  async function agentResponse(mode, turn) {
    const history = state.messages.slice(0, -1).map((m) => ({ role: m.role, content: m.content || "" }));
    const req = {
      conversation: state.id, mode, query: state.messages[state.messages.length - 1].content,
      history, system: $("system").value.trim(), params: params(), max_rounds: +$("max_rounds").value || undefined,
    };
    // 409: the conversation's previous turn (stopped a moment ago) is finishing its step.
    for (let attempt = 0; ; attempt++) {
      const response = await fetch("/ui/agent", {
        method: "POST", headers: headers(), body: JSON.stringify(req), signal: turn.signal,
      });
      if (response.status !== 409 || attempt >= 60) {
        if (!response.ok) await failed(response);
        return response;
      }
      if (attempt === 0) turn.note = turn.steps.add({ kind: "note", text: "waiting for the previous step to finish…" });
      await sleep(500);
    }
  }

  async function runAgent(mode, turn) {
    const started = performance.now();
    const response = await agentResponse(mode, turn);
    const steps = turn.steps;
    if (turn.note) { steps.remove(turn.note); turn.note = null; }
    const parts = steps.parts;
    const last = () => parts[parts.length - 1];
    const lastOf = (kind) => { for (let i = parts.length - 1; i >= 0; i--) if (parts[i].kind === kind) return parts[i]; return null; };
    for await (const ev of sse(response)) {
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
        const p = lastOf("code") || steps.add({ kind: "code", code: "", output: null, images: [] });
        p.images.push(ev.png);
        steps.update(p);
      } else if (ev.type === "output") {
        const p = lastOf("code") || steps.add({ kind: "code", code: "", output: null, images: [] });
        Object.assign(p, { output: ev.text, error: ev.error, timed_out: ev.timed_out });
        steps.update(p);
      } else if (ev.type === "final") {
        turn.reply.content = ev.text;
        turn.final = true;
        if (ev.stopped_by_limit) steps.add({ kind: "limit", text: ev.text });
        const t = ev.timing || {};
        turn.reply.meta = {
          rounds: ev.rounds,
          seconds: (performance.now() - started) / 1000,  // the whole turn, tools and code included
          completion_tokens: t.completion_tokens,
          tokens_per_second: t.tokens_per_second,
        };
        steps.collapse();
      } else if (ev.type === "error") {
        steps.add({ kind: "error", text: ev.message });
      }
      scroll();
    }
    if (!turn.reply.content) turn.reply.content = parts.filter((p) => p.kind === "text").map((p) => p.text).join("\n");
  }

  // -- A turn: send, stop, retry --------------------------------------------------------------
  function setRunning(on) {
    $("send").hidden = on;
    $("stop").hidden = !on;
    document.body.classList.toggle("running", on);
  }

  async function send(text) {
    if (state.controller) return;
    if (text !== null) state.messages.push({ role: "user", content: text });
    redraw();
    const controller = new AbortController();
    state.controller = controller;
    setRunning(true);
    state.running = (async () => {
      const mode = $("mode").value;
      const div = bubble("assistant");
      const body = div.querySelector(".body");
      const reply = { role: "assistant", content: "" };
      const turn = { reply, signal: controller.signal, steps: new CF.Steps(body, []), final: false, note: null };
      let keep = false;
      try {
        await ensureConversation(mode);
        if (mode === "chat") await runChat(turn); else await runAgent(mode, turn);
        keep = true;
      } catch (err) {
        if (err.name === "AbortError") {
          if (turn.note) turn.steps.remove(turn.note);
          keep = turn.steps.parts.some((p) => p.kind !== "note" && (p.kind !== "text" || p.text));
          reply.meta = Object.assign(reply.meta || {}, { stopped: true });
          if (!keep) turn.steps.add({ kind: "note", text: "stopped" });
        } else {
          div.className = "msg error";
          div.querySelector(".role").textContent = "Error";
          body.textContent = err.message;
        }
      } finally {
        turn.steps.flush();
        turn.steps.collapse();
        if (keep) {
          if (!reply.content) reply.content = turn.steps.parts.filter((p) => p.kind === "text").map((p) => p.text).join("\n");
          const steps = CF.plainSteps(turn.steps.parts.filter((p) => p.kind !== "note"));
          if (mode !== "chat" || steps.some((p) => p.kind !== "text")) reply.steps = steps;
          reply.meta = Object.assign({ mode, model: state.model }, reply.meta || {});
          state.messages.push(reply);
          showMeta(div, reply.meta);
          showSpeed(reply.meta);
        }
        state.controller = null;
        setRunning(false);
        div.dataset.done = "true";
        scroll();
      }
      if (keep) await save();
    })();
    return state.running;
  }

  async function stop() {
    if (!state.controller) return;
    state.controller.abort();
    try { await state.running; } catch (err) { /* reported on the page */ }
  }

  async function retry() {
    await stop();
    while (state.messages.length && state.messages[state.messages.length - 1].role !== "user") state.messages.pop();
    if (state.messages.length) await send(null);
  }

  // -- Conversations ------------------------------------------------------------------------
  function notice(text) {
    $("conv-notice").hidden = !text;
    $("conv-notice").textContent = text || "";
  }
  function storeDown() {
    notice("Conversations are kept in this tab only: " + store.reason + ".");
    state.list = state.list.filter((c) => c.local);
    drawList();
  }

  async function refreshList() {
    try {
      state.list = await store.list();
      notice("");
    } catch (err) {
      if (err instanceof CF.StoreUnavailable) storeDown();
      else notice("Could not list the conversations: " + err.message);
      if (err.status === 401) askForKey();
      return false;
    }
    drawList();
    return true;
  }

  function titleFrom(text) {
    const line = String(text).replace(/\s+/g, " ").trim();
    return line.length > 60 ? line.slice(0, 59) + "…" : line || "New conversation";
  }

  /** Give the conversation an id before its first turn (the agent routes use it too). */
  async function ensureConversation(mode) {
    if (state.id) return;
    const first = state.messages.find((m) => m.role === "user");
    state.title = titleFrom(first ? first.content : "");
    $("title").textContent = state.title;
    if (store.available) {
      try {
        const conv = await store.create(state.title, mode);
        state.id = conv.id;
        state.stored = true;
        state.list.unshift(conv);
        drawList();
        return;
      } catch (err) {
        if (err instanceof CF.StoreUnavailable) storeDown(); else notice("Could not save: " + err.message);
      }
    }
    state.id = CF.localId();
    state.stored = false;
  }

  async function save() {
    if (!state.stored || !store.available) return;
    try {
      const conv = await store.update(state.id, { title: state.title, mode: $("mode").value, messages: state.messages });
      const i = state.list.findIndex((c) => c.id === conv.id);
      if (i >= 0) state.list.splice(i, 1);
      state.list.unshift({ id: conv.id, title: conv.title, mode: conv.mode, created: conv.created, updated: conv.updated });
      drawList();
    } catch (err) {
      if (err instanceof CF.StoreUnavailable) storeDown(); else notice("Could not save: " + err.message);
    }
  }

  function resetConversation() {
    state.messages = [];
    state.id = null;
    state.stored = false;
    state.title = "";
    state.files = [];
    $("title").textContent = "New conversation";
    showFiles();
    redraw();
    drawList();
  }

  async function newConversation() {
    await stop();
    resetConversation();
    closeSidebar();
    $("input").focus();
  }

  async function openConversation(id) {
    await stop();
    let conv;
    try {
      conv = await store.get(id);
    } catch (err) {
      if (err instanceof CF.StoreUnavailable) storeDown(); else notice("Could not open it: " + err.message);
      return;
    }
    state.messages = conv.messages || [];
    state.id = conv.id;
    state.stored = true;
    state.title = conv.title || "Conversation";
    state.files = [];
    $("title").textContent = state.title;
    const option = [...$("mode").options].find((o) => o.value === conv.mode && !o.disabled);
    if (option) { $("mode").value = conv.mode; showModeControls(); }
    const lastMeta = [...state.messages].reverse().find((m) => m.meta);
    showSpeed(lastMeta && lastMeta.meta);
    showFiles();
    redraw();
    drawList();
    closeSidebar();
  }

  function when(iso) {
    const d = new Date(typeof iso === "number" ? iso * 1000 : iso);
    if (isNaN(d)) return "";
    const today = new Date().toDateString() === d.toDateString();
    return today ? d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }) : d.toLocaleDateString();
  }

  function actionButton(label, title, handler) {
    const b = document.createElement("button");
    b.type = "button";
    b.className = "icon small";
    b.textContent = label;
    b.title = title;
    b.setAttribute("aria-label", title);
    b.addEventListener("click", (e) => { e.stopPropagation(); handler(b); });
    return b;
  }

  function drawList() {
    const ul = $("conversations");
    ul.replaceChildren();
    for (const c of state.list) {
      const li = document.createElement("li");
      li.className = "conv" + (c.id === state.id ? " active" : "");
      li.dataset.id = c.id;
      const open = document.createElement("button");
      open.type = "button";
      open.className = "open";
      const title = document.createElement("span");
      title.className = "conv-title";
      title.textContent = c.title || "Untitled";
      const sub = document.createElement("small");
      sub.textContent = [c.mode === "tools" ? "Tool" : c.mode === "code" ? "Code" : "Chat", when(c.updated)].filter(Boolean).join(" · ");
      open.append(title, sub);
      open.addEventListener("click", () => { if (c.id !== state.id || !state.messages.length) openConversation(c.id); });
      const acts = document.createElement("span");
      acts.className = "acts";
      acts.append(
        actionButton("✎", "Rename", () => rename(li, c)),
        actionButton("{ }", "Export as JSON", () => exportConv(c, "json")),
        actionButton("MD", "Export as Markdown", () => exportConv(c, "markdown")),
        actionButton("✕", "Delete", (b) => removeConv(c, b)),
      );
      li.append(open, acts);
      ul.appendChild(li);
    }
  }

  function rename(li, c) {
    const input = document.createElement("input");
    input.className = "rename";
    input.value = c.title || "";
    input.setAttribute("aria-label", "New title");
    li.querySelector(".open").replaceWith(input);
    input.focus();
    input.select();
    let done = false;
    async function finish(commit) {
      if (done) return;
      done = true;
      const title = input.value.trim();
      if (commit && title && title !== c.title) {
        try {
          await store.update(c.id, { title });
          c.title = title;
          if (c.id === state.id) { state.title = title; $("title").textContent = title; }
        } catch (err) {
          if (err instanceof CF.StoreUnavailable) storeDown(); else notice("Could not rename: " + err.message);
        }
      }
      drawList();
    }
    input.addEventListener("keydown", (e) => {
      if (e.key === "Enter") { e.preventDefault(); finish(true); }
      if (e.key === "Escape") { e.preventDefault(); e.stopPropagation(); finish(false); }
    });
    input.addEventListener("blur", () => finish(true));
  }

  async function exportConv(c, format) {
    try { await store.download(c.id, format, c.title); } catch (err) { notice("Could not export: " + err.message); }
  }

  async function removeConv(c, button) {
    if (!button.classList.contains("confirm")) {  // the first click asks
      button.classList.add("confirm");
      button.textContent = "Delete?";
      setTimeout(() => { button.classList.remove("confirm"); button.textContent = "✕"; }, 3000);
      return;
    }
    try {
      await store.remove(c.id);
    } catch (err) {
      if (err instanceof CF.StoreUnavailable) storeDown(); else { notice("Could not delete: " + err.message); return; }
    }
    state.list = state.list.filter((x) => x.id !== c.id);
    if (c.id === state.id) {
      await stop();
      fetch("/ui/clear", { method: "POST", headers: headers(), body: JSON.stringify({ conversation: c.id }) }).catch(() => {});
      resetConversation();
    } else drawList();
  }

  // -- Code session files -------------------------------------------------------------------
  function showFiles() {
    const ul = $("files");
    ul.replaceChildren();
    for (const f of state.files) {
      const li = document.createElement("li");
      li.textContent = f.name + " ";
      const size = document.createElement("span");
      size.className = "muted";
      size.textContent = "(" + f.size + " bytes)";
      li.appendChild(size);
      ul.appendChild(li);
    }
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
    await ensureConversation("code");
    for (const f of files) {
      try {
        const req = { conversation: state.id, name: f.name, data: await readBase64(f) };
        const response = await fetch("/ui/upload", { method: "POST", headers: headers(), body: JSON.stringify(req) });
        if (!response.ok) await failed(response);
        state.files = (await response.json()).files;
        showFiles();
      } catch (err) {
        $("upload-status").textContent = f.name + ": " + err.message;
      }
    }
  }

  // -- Layout: mode-specific controls, the sidebar on narrow screens ---------------------------
  function showModeControls() {
    const mode = $("mode").value;
    for (const row of document.querySelectorAll("[data-modes]")) {
      row.hidden = !row.dataset.modes.split(" ").includes(mode);
    }
  }
  function openSidebar() { document.body.classList.add("sidebar-open"); $("scrim").hidden = false; }
  function closeSidebar() { document.body.classList.remove("sidebar-open"); $("scrim").hidden = true; }

  // -- Wiring ---------------------------------------------------------------------------------
  $("composer").addEventListener("submit", (e) => {
    e.preventDefault();
    const text = $("input").value.trim();
    if (!text || state.controller) return;
    $("input").value = "";
    send(text);
  });
  $("input").addEventListener("keydown", (e) => {
    // Enter sends, Shift+Enter is a new line; Enter that ends an IME composition (Chinese
    // input) does neither.
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing && e.keyCode !== 229) {
      e.preventDefault();
      $("composer").requestSubmit();
    }
  });
  document.addEventListener("keydown", (e) => {
    if (e.key !== "Escape") return;
    if (state.controller) { e.preventDefault(); stop(); } else if (document.body.classList.contains("sidebar-open")) closeSidebar();
  });
  $("stop").addEventListener("click", stop);
  $("retry").addEventListener("click", retry);
  $("clear").addEventListener("click", async () => {
    await stop();
    // Forget the server-side agent (and its code session) too.
    if (state.id) fetch("/ui/clear", { method: "POST", headers: headers(), body: JSON.stringify({ conversation: state.id }) }).catch(() => {});
    state.messages = [];
    state.files = [];
    showFiles();
    redraw();
    await save();
  });
  $("new-chat").addEventListener("click", newConversation);
  $("open-sidebar").addEventListener("click", openSidebar);
  $("close-sidebar").addEventListener("click", closeSidebar);
  $("scrim").addEventListener("click", closeSidebar);
  for (const id of ["temperature", "top_p", "repetition_penalty"]) {
    $(id).addEventListener("input", () => { $(id + "-value").textContent = $(id).value; });
  }
  $("api-key").addEventListener("change", () => {
    localStorage.setItem("chatforge-key", $("api-key").value);
    store.available = true;
    start();
  });
  $("upload").addEventListener("change", async () => {
    await uploadFiles(Array.from($("upload").files));
    $("upload").value = "";
  });
  $("mode").addEventListener("change", () => {
    showModeControls();
    if (state.stored && store.available) store.update(state.id, { mode: $("mode").value }).catch(() => {});
  });
  showModeControls();

  /** Load the list and reopen the most recent conversation (unless one is on the page). */
  async function start() {
    try {
      if (!(await refreshList())) return;
      if (!state.id && !state.messages.length && state.list.length) await openConversation(state.list[0].id);
    } finally {
      document.body.dataset.ready = "true";  // the list is loaded (or known to be unavailable)
    }
  }

  fetch("/ui/config").then((r) => r.json()).then((cfg) => {
    state.model = cfg.model;
    $("model-name").textContent = cfg.model;
    if (cfg.auth && !localStorage.getItem("chatforge-key")) $("key-row").hidden = false;
    for (const opt of $("mode").options) {
      if (!cfg.modes.includes(opt.value)) { opt.disabled = true; opt.textContent += " (needs the agent loop)"; }
    }
    if (cfg.modes.length === 1) $("mode-note").textContent = "Tool and Code Interpreter modes are not in this build.";
    if (cfg.max_rounds) $("max_rounds").value = cfg.max_rounds;
    if (!cfg.auth || localStorage.getItem("chatforge-key")) start(); else document.body.dataset.ready = "true";
  });
})();
