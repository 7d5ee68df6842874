"""The web UI in a real browser (Debian's chromium driven by Playwright): Chat mode streams
an answer from the server. Screenshot: test-artifacts/serve-ui-chat.png."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import KEY, ROOT

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium is not installed (apt-get install -y chromium; make test does it)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
        )
        yield b
        b.close()


def test_chat_mode_streams_an_answer(browser, chat_server):
    page = browser.new_page()
    page.goto(chat_server.url + "/")
    page.wait_for_selector("#model-name:has-text('tiny')")
    assert page.locator("#key-row").is_visible()  # the server needs a key: the page asks for it
    page.fill("#api-key", KEY)
    page.dispatch_event("#api-key", "change")
    page.fill("#max_tokens", "8")
    page.fill("#input", "Hello, 你好!")
    page.press("#input", "Enter")
    page.wait_for_selector(".msg.assistant[data-done=true]", timeout=20000)
    assert page.locator(".msg.user").inner_text().endswith("Hello, 你好!")
    assert page.locator(".msg.error").count() == 0
    assert page.locator(".msg.assistant .body").inner_text().strip()
    out = ROOT / "test-artifacts"
    out.mkdir(exist_ok=True)
    page.screenshot(path=str(out / "serve-ui-chat.png"), full_page=True)
    page.click("#clear")
    assert page.locator(".msg").count() == 0
