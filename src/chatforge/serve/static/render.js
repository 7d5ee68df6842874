// Rendering of model text: Markdown (marked, GitHub flavour) with $math$ (KaTeX), sanitised
// by DOMPurify, code highlighted by highlight.js with a copy button on each block. All the
// libraries are served from /ui/static/vendor (scripts/refresh-web-vendor.sh), no CDN.
(function () {
  const CF = (window.CF = window.CF || {});

  // -- Markdown + math -> sanitised HTML ----------------------------------------------------
  const md = new marked.Marked({ gfm: true, breaks: false });
  const katexOptions = { throwOnError: false, output: "htmlAndMathml" };
  // Block math ($$ on lines of their own) from marked-katex-extension; inline math by the
  // rules below, which models writing Chinese need: no space is required around $...$
  // (pandoc's rule instead: no space just inside the dollars, no digit just after, so
  // "$5 and $10" stays text), and \(...\) and \[...\] as LaTeX writes them.
  const INLINE_MATH = [
    [/^\$\$(?!\$)([^\n]+?)\$\$/, true],
    [/^\$(?=[^\s$])((?:\\.|[^\\\n$])*?[^\s\\$])\$(?!\d)/, false],
    [/^\\\(([\s\S]+?)\\\)/, false],
    [/^\\\[([\s\S]+?)\\\]/, true],
  ];
  const inlineMath = {
    name: "cfInlineMath",
    level: "inline",
    start(src) {
      const m = /\$|\\[([]/.exec(src);
      return m ? m.index : undefined;
    },
    tokenizer(src) {
      for (const [rule, display] of INLINE_MATH) {
        const m = rule.exec(src);
        if (m) return { type: "cfInlineMath", raw: m[0], text: m[1].trim(), displayMode: display };
      }
      return undefined;
    },
    renderer(token) {
      return katex.renderToString(token.text, Object.assign({ displayMode: token.displayMode }, katexOptions));
    },
  };
  md.use({ extensions: [...markedKatex(katexOptions).extensions.filter((e) => e.level === "block"), inlineMath] });

  DOMPurify.addHook("afterSanitizeAttributes", (node) => {
    if (node.tagName === "A" && node.getAttribute("href")) {
      node.setAttribute("target", "_blank");
      node.setAttribute("rel", "noopener noreferrer");
    }
  });

  function escapeHtml(s) {
    return String(s).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;");
  }

  /** Markdown (with math) as sanitised HTML; never throws. */
  function markdown(text) {
    let html;
    try {
      html = md.parse(String(text || ""));
    } catch (err) {
      html = "<pre>" + escapeHtml(text) + "</pre>";
    }
    return DOMPurify.sanitize(html, { ADD_ATTR: ["target"] });
  }

  // -- Code blocks: highlighting (cached, so re-rendering a stream stays cheap) + copy -----
  const cache = new Map();
  function highlighted(text, lang) {
    const key = lang + "\u0001" + text;
    let html = cache.get(key);
    if (html === undefined) {
      try {
        html = lang && hljs.getLanguage(lang)
          ? hljs.highlight(text, { language: lang, ignoreIllegals: true }).value
          : text.length < 20000 ? hljs.highlightAuto(text).value : escapeHtml(text);
      } catch (err) {
        html = escapeHtml(text);
      }
      if (cache.size > 200) cache.clear();
      cache.set(key, html);
    }
    return html;
  }

  function languageOf(code) {
    const m = /(?:^|\s)language-([\w+#.-]+)/.exec(code.className);
    return m ? m[1].toLowerCase() : "";
  }

  /** Highlight `code` (a <code> element) showing `text`, and give its <pre> a copy bar. */
  function codeBlock(code, text, lang) {
    code.innerHTML = highlighted(text, lang);
    code.classList.add("hljs");
    const pre = code.parentNode;
    if (!pre || pre.tagName !== "PRE" || pre.parentNode.classList.contains("codeblock")) return;
    const wrap = document.createElement("div");
    wrap.className = "codeblock";
    const bar = document.createElement("div");
    bar.className = "codebar";
    const label = document.createElement("span");
    label.textContent = lang || "text";
    const copy = document.createElement("button");
    copy.type = "button";
    copy.className = "copy";
    copy.textContent = "Copy";
    copy.setAttribute("aria-label", "Copy the code");
    bar.append(label, copy);
    pre.replaceWith(wrap);
    wrap.append(bar, pre);
  }

  /** Highlight every code block under `root` that is not highlighted yet. */
  function enhance(root) {
    for (const code of root.querySelectorAll("pre > code:not(.hljs)")) {
      codeBlock(code, code.textContent.replace(/\n$/, ""), languageOf(code));
    }
  }

  function renderInto(el, text) {
    el.innerHTML = markdown(text);
    enhance(el);
  }

  /** Re-renders `el` at most once per animation frame as streamed text grows. */
  function live(el) {
    let text = "", pending = false;
    function draw() { pending = false; renderInto(el, text); }
    return {
      update(t) {
        text = t;
        if (!pending) { pending = true; requestAnimationFrame(() => pending && draw()); }
      },
      flush() { if (pending) draw(); },
    };
  }

  async function copyText(text) {
    if (navigator.clipboard && window.isSecureContext) {
      try { await navigator.clipboard.writeText(text); return true; } catch (err) { /* fall back */ }
    }
    const area = document.createElement("textarea");
    area.value = text;
    area.style.position = "fixed";
    area.style.opacity = "0";
    document.body.appendChild(area);
    area.select();
    let ok = false;
    try { ok = document.execCommand("copy"); } catch (err) { ok = false; }
    area.remove();
    return ok;
  }

  document.addEventListener("click", async (e) => {
    const button = e.target.closest("button.copy");
    if (!button) return;
    const code = button.closest(".codeblock").querySelector("code");
    const ok = await copyText(code.textContent);
    button.textContent = ok ? "Copied" : "Copy failed";
    setTimeout(() => { button.textContent = "Copy"; }, 1500);
  });

  Object.assign(CF, { escapeHtml, markdown, renderInto, live, enhance, codeBlock, copyText });
})();
