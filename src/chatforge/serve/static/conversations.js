// The server's conversation store (/ui/conversations): list, create, load, save, rename,
// delete, export. When the routes are missing (404) or the store is down (503), `available`
// turns false and the page keeps its conversation in memory only.
(function () {
  const CF = (window.CF = window.CF || {});

  class StoreUnavailable extends Error {}

  class Conversations {
    constructor(headers) {
      this.headers = headers; // () => request headers (with the API key)
      this.available = true;
      this.reason = "";
    }

    async request(method, path, body) {
      let response;
      try {
        response = await fetch("/ui/conversations" + path, {
          method,
          headers: this.headers(),
          body: body === undefined ? undefined : JSON.stringify(body),
        });
      } catch (err) {
        throw this.unavailable("the server could not be reached");
      }
      if (response.status === 404 && !path) throw this.unavailable("this server does not save conversations");
      if (response.status === 503) throw this.unavailable("the conversation store is unavailable");
      if (!response.ok) {
        let text = response.status + " " + response.statusText;
        try { text = (await response.json()).error.message; } catch (err) { /* not JSON */ }
        const error = new Error(text);
        error.status = response.status;
        throw error;
      }
      return response;
    }
    unavailable(reason) {
      this.available = false;
      this.reason = reason;
      return new StoreUnavailable(reason);
    }

    async list() {
      const r = await this.request("GET", "");
      this.available = true;
      return (await r.json()).conversations || [];
    }
    async create(title, mode) { return (await this.request("POST", "", { title, mode })).json(); }
    async get(id) { return (await this.request("GET", "/" + encodeURIComponent(id))).json(); }
    async update(id, fields) { return (await this.request("PUT", "/" + encodeURIComponent(id), fields)).json(); }
    async remove(id) { await this.request("DELETE", "/" + encodeURIComponent(id)); }

    /** Download the export (it needs the API key, so it is fetched, then saved from a blob). */
    async download(id, format, title) {
      const r = await this.request("GET", "/" + encodeURIComponent(id) + "/export?format=" + format);
      const blob = await r.blob();
      const disposition = r.headers.get("Content-Disposition") || "";
      const m = /filename\*?=(?:UTF-8'')?"?([^";]+)"?/i.exec(disposition);
      const fallback = (title || "conversation").replace(/[\\/:*?"<>|\s]+/g, "-").slice(0, 60) + (format === "json" ? ".json" : ".md");
      const a = document.createElement("a");
      a.href = URL.createObjectURL(blob);
      a.download = m ? decodeURIComponent(m[1]) : fallback;
      document.body.appendChild(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(a.href), 10000);
    }
  }

  /** A 32-hex id for a conversation kept in memory only (the agent routes need one too). */
  function localId() {
    const bytes = new Uint8Array(16);
    crypto.getRandomValues(bytes);
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  Object.assign(CF, { Conversations, StoreUnavailable, localId });
})();
