// The sidebar's list of saved conversations: one row each (title, mode, when), opened with a
// click, renamed in place, exported as JSON or Markdown, deleted with two clicks. What those
// do to the page and the store is the app's: it passes the handlers.
(function () {
  const CF = (window.CF = window.CF || {});

  function when(stamp) {
    const d = new Date(typeof stamp === "number" ? stamp * 1000 : stamp);
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

  class ConversationList {
    /**
     * @param {HTMLElement} ul the list element
     * @param {object} on handlers: activeId(), isEmpty(), open(id), rename(c, title) -> Promise,
     *   exportAs(c, format), remove(c) -> Promise
     */
    constructor(ul, on) {
      this.ul = ul;
      this.on = on;
      this.items = [];
    }

    draw(items) {
      if (items) this.items = items;
      this.ul.replaceChildren();
      for (const c of this.items) {
        const li = document.createElement("li");
        li.className = "conv" + (c.id === this.on.activeId() ? " active" : "");
        li.dataset.id = c.id;
        const open = document.createElement("button");
        open.type = "button";
        open.className = "open";
        const title = document.createElement("span");
        title.className = "conv-title";
        title.textContent = c.title || "Untitled";
        const sub = document.createElement("small");
        const mode = c.mode === "tools" ? "Tool" : c.mode === "code" ? "Code" : "Chat";
        sub.textContent = [mode, when(c.updated)].filter(Boolean).join(" · ");
        open.append(title, sub);
        open.addEventListener("click", () => {
          if (c.id !== this.on.activeId() || this.on.isEmpty()) this.on.open(c.id);
        });
        const acts = document.createElement("span");
        acts.className = "acts";
        acts.append(
          actionButton("✎", "Rename", () => this.rename(li, c)),
          actionButton("{ }", "Export as JSON", () => this.on.exportAs(c, "json")),
          actionButton("MD", "Export as Markdown", () => this.on.exportAs(c, "markdown")),
          actionButton("✕", "Delete", (b) => this.remove(c, b)),
        );
        li.append(open, acts);
        this.ul.appendChild(li);
      }
    }

    /** Swap the row's title for a text box: Enter or leaving it saves, Esc cancels. */
    rename(li, c) {
      const input = document.createElement("input");
      input.className = "rename";
      input.value = c.title || "";
      input.setAttribute("aria-label", "New title");
      li.querySelector(".open").replaceWith(input);
      input.focus();
      input.select();
      let done = false;
      const finish = async (commit) => {
        if (done) return;
        done = true;
        const title = input.value.trim();
        if (commit && title && title !== c.title) await this.on.rename(c, title);
        this.draw();
      };
      input.addEventListener("keydown", (e) => {
        if (e.key === "Enter") { e.preventDefault(); finish(true); }
        if (e.key === "Escape") { e.preventDefault(); e.stopPropagation(); finish(false); }
      });
      input.addEventListener("blur", () => finish(true));
    }

    /** The first click asks ("Delete?" for three seconds), the second deletes. */
    remove(c, button) {
      if (!button.classList.contains("confirm")) {
        button.classList.add("confirm");
        button.textContent = "Delete?";
        setTimeout(() => { button.classList.remove("confirm"); button.textContent = "✕"; }, 3000);
        return;
      }
      this.on.remove(c);
    }
  }

  CF.ConversationList = ConversationList;
})();
