// The chatforge web UI. Chat mode streams from this server's OpenAI-compatible API
// (/v1/chat/completions); Tool and Code Interpreter modes stream agent events from /ui/agent
// (the agent loop runs on the server, one per conversation id; /ui/upload puts files into
// its code session). Conversations are saved on the server (/ui/conversations) after each
// turn when it has a store, else kept in memory. Rendering: render.js, steps.js, transcript.js, sidebar.js.
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
  const sse = CF.Transcript.readEvents;
  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  // -- Messages on the page ----------------------------------------------------------------
  const bubble = (role) => CF.Transcript.bubble($("messages"), role);
  const showMeta = CF.Transcript.showMeta;
  function redraw() {
    $("messages").replaceChildren();
    for (const m of state.messages) CF.Transcript.drawMessage($("messages"), m);
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
    turn.reply.content = text.text;
    turn.reply.meta = CF.Transcript.streamMeta(started, first, last, usage);
  }

  // -- Tool and Code Interpreter modes: the agent runs on the server (/ui/agent) ----------
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
    for await (const ev of sse(response)) {
      const final = CF.Transcript.applyAgentEvent(steps, ev);
      if (final) {
        turn.reply.content = final.text;
        turn.final = true;
        const t = final.timing || {};
        turn.reply.meta = {
          rounds: final.rounds,
          seconds: (performance.now() - started) / 1000,  // the whole turn, tools and code included
          completion_tokens: t.completion_tokens,
          tokens_per_second: t.tokens_per_second,
        };
      }
      scroll();
    }
    const parts = steps.parts;
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

  async function renameConv(c, title) {
    try {
      await store.update(c.id, { title });
      c.title = title;
      if (c.id === state.id) { state.title = title; $("title").textContent = title; }
    } catch (err) {
      if (err instanceof CF.StoreUnavailable) storeDown(); else notice("Could not rename: " + err.message);
    }
  }

  async function exportConv(c, format) {
    try { await store.download(c.id, format, c.title); } catch (err) { notice("Could not export: " + err.message); }
  }

  async function removeConv(c) {
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

  const sidebar = new CF.ConversationList($("conversations"), {
    activeId: () => state.id,
    isEmpty: () => !state.messages.length,
    open: (id) => openConversation(id),
    rename: renameConv,
    exportAs: exportConv,
    remove: removeConv,
  });
  function drawList() { sidebar.draw(state.list); }

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
