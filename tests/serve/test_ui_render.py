"""The web UI's rendering and layout in a real browser (Debian's chromium, Playwright), against
in-process servers whose scripted model answers by the conversation (instantly): in Chat,
Tool and Code Interpreter modes, in English and Chinese, the answer's Markdown renders as
GitHub Markdown (one table, one numbered list of three, a nested list, a task list, a block
quote), math as KaTeX, code highlighted with a copy button (JavaScript: in Code mode a ```python block is code to run), the agent's steps as collapsed
blocks, and HTML in the model's output is never run. Then: the dark theme and the narrow
layout, the keyboard (Enter, Shift+Enter, Esc stops, Retry during a step), conversations
that outlive a reload and a server restart, and the page without a conversation store.
Screenshots go to pytest's tmp_path.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from scripted import prompt_model
from serve_support import KEY

from chatforge.serve.agent_sessions import AgentOptions
from chatforge.serve.app import create_app
from chatforge.serve.in_process import serve_in_thread
from chatforge.serve.settings import ServeSettings

MARKDOWN = {
    "en": """Here is what I found.

| City | Weather |
| --- | --- |
| Beijing | Sunny |
| Paris | Rain |

1. Open the file
2. Read the rows
3. Plot them

- Fruit
  - Apple
  - Pear
- Vegetables

Done so far:

- [x] read
- [ ] plot

> Keep it simple.

Energy is $E=mc^2$ and a price of $5 is not math.

```javascript
function add(a, b) {
  return a + b;
}
```

<script>window.__pwned = 1</script>
<img src="x" onerror="window.__pwned = 2">
""",
    # A loose list (blank lines between the items): rendered as "1. 1. 1." before.
    "zh": """这是结果。

| 城市 | 天气 |
| --- | --- |
| 北京 | 晴 |
| 上海 | 小雨 |

1. 打开文件

2. 读取数据

3. 画出图表

- 水果
  - 苹果
  - 梨
- 蔬菜

进度：

- [x] 读取
- [ ] 画图

> 保持简单。

质能方程是$E=mc^2$，价格是 5 元。

```javascript
function add(a, b) {
  return a + b;
}
```

<script>window.__pwned = 1</script>
<img src="x" onerror="window.__pwned = 2">
""",
}
TOOL_CALL = '<tool_call>\n{"name": "calculator", "arguments": {"expression": "6*7"}}\n</tool_call>'
CODE = '```python\nprint("\\n".join(f"line {i}" for i in range(40)))\n```'
SLOW = "This answer streams slowly, word by word. " * 40
QUESTIONS = {
    ("chat", "en"): "Summarise the weather, please.",
    ("chat", "zh"): "请总结一下天气。",
    ("tools", "en"): "[tool] What is 6*7? Then summarise.",
    ("tools", "zh"): "[tool] 6*7 等于多少？然后总结。",
    ("code", "en"): "[code] Print forty lines, then summarise.",
    ("code", "zh"): "[code] 打印四十行，然后总结。",
}


def reply_for(prompt: str) -> str:
    """The scripted model: a tool call or code for "[tool]" / "[code]" questions until their
    result is in, a slow answer for "[slow]", else the Markdown in the question's language."""
    blocks = prompt.split("<|im_start|>")
    previous = blocks[-2] if len(blocks) > 1 else ""
    queries = [b for b in blocks if b.startswith("user") and "<tool_response>" not in b and "```result" not in b]
    query = queries[-1] if queries else ""
    answered = "<tool_response>" in previous or "```result" in previous
    if "[tool]" in query and not answered:
        return TOOL_CALL
    if "[code]" in query and not answered:
        return CODE
    if "[slow]" in query:
        return SLOW
    return MARKDOWN["zh" if re.search(r"[\u4e00-\u9fff]", query) else "en"]


@contextmanager
def ui_server(tokenizer, home: Path, conversations_db: Path | None = None) -> Iterator[str]:
    """An in-process server of the scripted model with CHATFORGE_HOME=home (its conversations)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CHATFORGE_HOME", str(home))
        model = prompt_model(tokenizer, reply_for, delay=lambda text: 0.03 if text is SLOW else 0.0)
        settings = ServeSettings(api_key=KEY, conversations_db=conversations_db)
        app = create_app(model, settings, agent_options=AgentOptions(workdir=home / "work"))
        with serve_in_thread(app) as url:
            yield url


@pytest.fixture(scope="module")
def server(tiny_tokenizer, tmp_path_factory) -> Iterator[str]:
    with ui_server(tiny_tokenizer, tmp_path_factory.mktemp("ui-home")) as url:
        yield url


def open_page(browser, url: str, *, dark: bool = False, width: int = 1280, height: int = 900, locale: str = "en-US"):
    context = browser.new_context(
        viewport={"width": width, "height": height},
        color_scheme="dark" if dark else "light",
        locale=locale,
        permissions=["clipboard-read", "clipboard-write"],
    )
    context.add_init_script(f"localStorage.setItem('chatforge-key', {json.dumps(KEY)})")
    page = context.new_page()
    page.errors = []
    page.on("pageerror", lambda err: page.errors.append(str(err)))
    page.goto(url + "/")
    page.wait_for_selector("body[data-ready=true]")
    return page


def ask(page, text: str, mode: str | None = None):
    """Send `text` (in `mode`) and wait for the answer; returns its message element."""
    if mode is not None:
        page.select_option("#mode", mode)
    done = page.locator(".msg.assistant[data-done=true]").count()
    page.fill("#input", text)
    page.press("#input", "Enter")
    page.wait_for_function(
        f"document.querySelectorAll('.msg.assistant[data-done=true]').length > {done}", timeout=60000
    )
    return page.locator(".msg.assistant").last


def check_markdown(msg) -> None:
    body = msg.locator(".body .part.text").last  # the answer (after any steps)
    assert body.locator("table").count() == 1 and body.locator("table tbody tr").count() == 2
    ol = body.locator("ol")
    assert ol.count() == 1 and ol.locator("> li").count() == 3
    # The markers are 1, 2, 3: one list that starts at 1, its items numbered by the browser.
    assert ol.evaluate("o => [o.start, [...o.children].map(li => li.value || 0)]") == [1, [0, 0, 0]]
    assert ol.evaluate("o => getComputedStyle(o).listStyleType") == "decimal"
    assert body.locator("ul > li > ul > li").count() == 2  # the nested list
    assert body.locator("input[type=checkbox]").count() == 2
    assert body.locator("blockquote").count() == 1
    katex = body.locator(".katex")
    assert katex.count() == 1  # $E=mc^2$; "$5" stays text
    assert katex.locator(".katex-html").text_content() == "E=mc2"
    assert katex.locator(".katex-html .msupsub").text_content() == "2"  # the exponent
    code = body.locator(".codeblock code.hljs")
    assert code.count() == 1 and code.locator("span[class^=hljs-]").count() >= 2
    copy = body.locator(".codeblock button.copy")
    assert copy.is_visible()
    copy.click()
    assert msg.page.evaluate("navigator.clipboard.readText()") == "function add(a, b) {\n  return a + b;\n}"
    # The model's <script> and <img onerror> never ran and are gone from the page.
    assert msg.page.evaluate("typeof window.__pwned") == "undefined"
    assert body.locator("script").count() == 0
    assert body.locator("img").evaluate_all("imgs => imgs.filter(i => i.hasAttribute('onerror')).length") == 0


@pytest.mark.parametrize("lang", ["en", "zh"])
@pytest.mark.parametrize("mode", ["chat", "tools", "code"])
def test_answers_render_as_markdown_with_steps(browser, server, mode, lang, tmp_path):
    page = open_page(browser, server, locale="zh-CN" if lang == "zh" else "en-US")
    page.click("#new-chat")
    page.select_option("#mode", mode)
    # Mode-specific controls only in their mode.
    assert page.locator("#agent-row").is_visible() == (mode != "chat")
    assert page.locator("#upload-row").is_visible() == (mode == "code")
    msg = ask(page, QUESTIONS[mode, lang])
    assert page.locator(".msg.error, .part.error").count() == 0
    check_markdown(msg)
    steps = msg.locator("details.step")
    if mode == "chat":
        assert steps.count() == 0
        assert "tokens/s" in page.locator("#speed").inner_text()
    else:
        kind = "tool" if mode == "tools" else "code"
        assert steps.count() == 1 and msg.locator(f"details.step.{kind}:not([open])").count() == 1
        summary = steps.locator("summary").inner_text()
        assert ("calculator" in summary) if mode == "tools" else ("print(" in summary)
        assert "· done" in summary
        steps.locator("summary").click()
        if mode == "tools":
            assert "42" in steps.locator("pre.output").inner_text()
        else:  # forty lines: folded to the first ones, "Show all" shows the rest
            out = steps.locator("pre.output")
            assert "line 0" in out.inner_text() and "line 39" not in out.inner_text()
            steps.locator("button.show-all").click()
            assert "line 39" in out.inner_text()
        assert "tokens/s" in page.locator("#speed").inner_text()  # from the final event's timing
        assert "tokens/s" in msg.locator(".meta").inner_text()
    assert page.locator("#model-name").inner_text() == "scripted"
    page.screenshot(path=str(tmp_path / f"ui-{mode}-{lang}.png"), full_page=True)
    assert page.errors == []
    page.context.close()


def test_dark_narrow_keyboard_stop_and_retry(browser, server, tmp_path):
    page = open_page(browser, server, dark=True, width=390, height=844, locale="zh-CN")
    # Narrow: the sidebar is a drawer, closed until the menu button opens it.
    box = page.locator("#sidebar").bounding_box()
    assert box["x"] + box["width"] <= 1
    page.click("#open-sidebar")
    page.wait_for_function("document.getElementById('sidebar').getBoundingClientRect().left >= 0")
    page.click("#new-chat")  # a new conversation closes the drawer
    page.wait_for_function("document.getElementById('sidebar').getBoundingClientRect().right <= 1")
    assert page.evaluate("getComputedStyle(document.body).backgroundColor") == "rgb(13, 17, 23)"
    # Shift+Enter is a new line; Enter sends.
    page.click("#input")
    page.keyboard.type("第一行")
    page.keyboard.press("Shift+Enter")
    page.keyboard.type("第二行")
    assert page.input_value("#input") == "第一行\n第二行"
    page.fill("#input", "")
    msg = ask(page, "请总结一下天气。", "chat")
    check_markdown(msg)
    page.screenshot(path=str(tmp_path / "ui-dark-narrow-zh.png"), full_page=False)
    page.click("#open-sidebar")
    page.wait_for_function("document.getElementById('sidebar').getBoundingClientRect().left >= 0")
    page.screenshot(path=str(tmp_path / "ui-dark-narrow-sidebar.png"))
    page.keyboard.press("Escape")  # closes the drawer when nothing runs
    page.wait_for_function("document.getElementById('sidebar').getBoundingClientRect().right <= 1")

    # Esc stops a streaming answer; what came so far stays, marked as stopped.
    page.fill("#input", "[slow] tell me a long story")
    page.press("#input", "Enter")
    page.wait_for_function("(document.querySelector('.msg.assistant:not([data-done]) .part.text') || {}).textContent")
    page.keyboard.press("Escape")
    page.wait_for_selector(".msg.assistant:last-child[data-done=true]")
    assert page.locator("#send").is_visible() and not page.locator("#stop").is_visible()
    last = page.locator(".msg.assistant").last
    assert last.locator(".part.text").inner_text().strip() and last.locator(".meta").inner_text().endswith("stopped")
    # Retry while the retried answer still streams: it starts again, once.
    page.click("#retry")
    page.wait_for_selector(".msg.assistant:not([data-done])")
    page.click("#retry")
    page.wait_for_function("(document.querySelector('.msg.assistant:not([data-done]) .part.text') || {}).textContent")
    page.click("#stop")
    page.wait_for_selector(".msg.assistant:last-child[data-done=true]")
    assert page.locator(".msg.user").count() == 2 and page.locator(".msg.assistant").count() == 2
    assert page.errors == []
    page.context.close()


def conversation_titles(page) -> list[str]:
    return page.locator("#conversations .conv-title").all_inner_texts()


def test_conversations_outlive_a_reload_and_a_restart(browser, tiny_tokenizer, tmp_path):
    home = tmp_path / "home"
    with ui_server(tiny_tokenizer, home) as url:
        page = open_page(browser, url)
        assert page.locator("#conv-notice").is_hidden() and conversation_titles(page) == []
        ask(page, "[tool] Remember this, 记住它", "tools")
        page.wait_for_selector("#conversations .conv.active")
        assert conversation_titles(page) == ["[tool] Remember this, 记住它"]
        # Rename it in place.
        page.click("#conversations .conv.active button[title=Rename]")
        page.fill("#conversations input.rename", "Weather 天气")
        page.press("#conversations input.rename", "Enter")
        page.wait_for_selector("#conversations .conv-title:has-text('Weather 天气')")
        page.reload()
        page.wait_for_selector("body[data-ready=true]")
        # Reopened: the list, the title, the messages, the mode and the collapsed step.
        assert conversation_titles(page) == ["Weather 天气"]
        assert page.locator("#title").inner_text() == "Weather 天气"
        assert page.locator(".msg.user").inner_text().endswith("Remember this, 记住它")
        assert page.locator(".msg.assistant details.step.tool:not([open])").count() == 1
        assert page.input_value("#mode") == "tools"
        check_markdown(page.locator(".msg.assistant").last)
        with page.expect_download() as download:
            page.click("#conversations .conv.active button[title='Export as JSON']")
        exported = json.loads(Path(download.value.path()).read_text())
        assert exported["title"] == "Weather 天气" and exported["messages"][0]["content"].endswith("记住它")
        with page.expect_download() as download:
            page.click("#conversations .conv.active button[title='Export as Markdown']")
        assert "记住它" in Path(download.value.path()).read_text()
        page.context.close()

    with ui_server(tiny_tokenizer, home) as url:  # a new server on the same CHATFORGE_HOME
        page = open_page(browser, url)
        assert conversation_titles(page) == ["Weather 天气"]
        assert page.locator(".msg.user").count() == 1
        # A second conversation, then delete the first (two clicks: the first one asks).
        page.click("#new-chat")
        ask(page, "Second one", "chat")
        page.wait_for_function("document.querySelectorAll('#conversations .conv').length === 2")
        assert conversation_titles(page) == ["Second one", "Weather 天气"]
        page.click("#conversations .conv:has-text('Weather') .open")
        page.wait_for_selector("#title:has-text('Weather 天气')")
        delete = page.locator("#conversations .conv.active button[title=Delete]")
        delete.click()
        delete.click()
        page.wait_for_function("document.querySelectorAll('#conversations .conv').length === 1")
        assert page.locator(".msg").count() == 0
        page.reload()
        page.wait_for_selector("body[data-ready=true]")
        assert conversation_titles(page) == ["Second one"]
        assert page.errors == []
        page.context.close()


def test_without_a_conversation_store_the_page_still_works(browser, tiny_tokenizer, tmp_path):
    damaged = tmp_path / "conversations.sqlite3"
    damaged.write_bytes(b"this is not a database" * 100)
    with ui_server(tiny_tokenizer, tmp_path / "home", conversations_db=damaged) as url:
        page = open_page(browser, url)
        assert page.locator("#conv-notice").is_visible()
        assert "this tab only" in page.locator("#conv-notice").inner_text()
        check_markdown(ask(page, "Summarise the weather, please.", "chat"))
        msg = ask(page, "[tool] What is 6*7? Then summarise.", "tools")
        assert msg.locator("details.step.tool:not([open])").count() == 1
        assert page.locator(".msg.user").count() == 2 and conversation_titles(page) == []
        assert page.errors == []
        page.context.close()
