"""The web UI in a real browser (Debian's chromium driven by Playwright): Chat mode streams
an answer; Tool mode shows the scripted model's tool call and its result as steps; Code
mode uploads a file, runs the scripted model's plotting code and shows the plot inline.
Screenshots go to each test's pytest temporary directory. The UI's agent routes
(/ui/agent's SSE events, /ui/upload, /ui/clear) are tested over HTTP, and the server-side
sessions (LRU, expiry, retry) in-process with a scripted engine.
"""

from __future__ import annotations

import base64
import json
import threading
import time

import httpx
from scripted import scripted_model
from serve_support import KEY

from chatforge.serve.agent_sessions import AgentOptions, AgentSessions
from chatforge.serve.agent_turn import AgentTurn
from chatforge.serve.agent_turn import run_turn as _run_turn

AUTH = {"Authorization": f"Bearer {KEY}"}

def test_chat_mode_streams_an_answer(browser, chat_server, tmp_path):
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
    page.screenshot(path=str(tmp_path / "serve-ui-chat.png"), full_page=True)
    page.click("#clear")
    assert page.locator(".msg").count() == 0


def open_page(browser, server, mode: str):
    page = browser.new_page(viewport={"width": 1200, "height": 1000})
    page.goto(server.url + "/")
    page.wait_for_selector("#model-name:not(:empty)")
    page.fill("#api-key", KEY)
    page.dispatch_event("#api-key", "change")
    page.select_option("#mode", mode)
    page.fill("#max_rounds", "1")  # the scripted models repeat themselves: one round is the whole story
    return page


def test_tool_mode_shows_calls_and_results_as_steps(browser, tool_server):
    page = open_page(browser, tool_server, "tools")
    assert page.locator("#agent-row").is_visible() and not page.locator("#upload-row").is_visible()
    page.fill("#input", "Weather in Beijing?")
    page.press("#input", "Enter")
    page.wait_for_selector(".msg.assistant[data-done=true]", timeout=20000)
    step = page.locator(".msg.assistant details.step.tool")
    assert step.count() == 1
    summary = step.locator("summary").inner_text()
    assert "get_weather" in summary and "· done" in summary
    assert step.evaluate("d => !d.open")  # collapsed once the answer is final
    step.locator("summary").click()
    assert "Sunny, 21 degrees celsius in Beijing" in step.inner_text()
    assert '"city_name": "Beijing"' in step.inner_text()
    page.click("#retry")  # retried on the server too: the same single step again
    page.wait_for_selector(".msg.assistant[data-done=true]", timeout=20000)
    assert page.locator(".msg.user").count() == 1 and page.locator("details.step.tool").count() == 1
    page.close()


def test_code_mode_uploads_runs_and_shows_the_plot(browser, code_server, tmp_path):
    page = open_page(browser, code_server, "code")
    data = tmp_path / "points.csv"
    data.write_text("x,y\n1,4\n2,2\n")
    page.set_input_files("#upload", str(data))
    page.wait_for_selector("#files li:has-text('points.csv')")
    page.fill("#input", "Plot my points, please.")
    page.press("#input", "Enter")
    page.wait_for_selector(".msg.assistant[data-done=true]", timeout=60000)
    assert page.locator(".msg.error, .part.error").count() == 0
    code = page.locator(".msg.assistant .step.code")
    assert code.count() == 1
    assert code.evaluate("d => !d.open")  # collapsed once the answer is final
    code.locator("summary").click()
    assert "plt.plot([1, 4, 2, 3])" in code.locator("code.language-python").inner_text()
    assert "[Image]" in code.locator("pre.output").inner_text()
    img = code.locator("img")
    assert img.get_attribute("src").startswith("data:image/png;base64,iVBORw0KGgo")
    assert img.evaluate("i => i.naturalWidth") > 100  # a real, decodable picture
    assert not any("```" in t for t in page.locator(".msg.assistant .part.text").all_inner_texts())
    page.screenshot(path=str(tmp_path / "serve-ui-code.png"), full_page=True)
    page.click("#clear")
    assert page.locator(".msg").count() == 0 and page.locator("#files li").count() == 0
    page.close()


def agent_events(server, **body) -> list[dict]:
    body = {
        "mode": "tools",
        "conversation": "http-test",
        "query": "Weather in Beijing?",
        "max_rounds": 1,
        "params": {"temperature": 0},
        **body,
    }
    with httpx.stream("POST", server.url + "/ui/agent", json=body, headers=AUTH, timeout=60) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [line[5:].strip() for line in r.iter_lines() if line.startswith("data:")]
    assert lines[-1] == "[DONE]"
    return [json.loads(line) for line in lines[:-1]]


def test_agent_route_streams_tool_steps(tool_server):
    events = agent_events(tool_server)
    kinds = [e["type"] for e in events]
    assert kinds == ["tool_call", "tool_result", "final"]
    call, result, final = events
    assert call["name"] == "get_weather" and call["arguments"]["city_name"] == "Beijing"
    assert result["id"] == call["id"] and not result["is_error"]
    assert result["content"] == "Sunny, 21 degrees celsius in Beijing"
    assert final["stopped_by_limit"] and final["rounds"] == 1
    timing = final["timing"]  # the turn's generations: the page shows their speed
    assert timing["completion_tokens"] > 0 and timing["seconds"] > 0 and timing["tokens_per_second"] > 0
    # The key is required, like everywhere else, and bodies are checked.
    body = {"mode": "tools", "conversation": "x", "query": "hi"}
    assert httpx.post(tool_server.url + "/ui/agent", json=body).status_code == 401
    bad = httpx.post(tool_server.url + "/ui/agent", json={**body, "mode": "sing"}, headers=AUTH)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "mode"
    bad = httpx.post(tool_server.url + "/ui/agent", json={**body, "params": {"top_p": 7}}, headers=AUTH)
    assert bad.status_code == 400 and "top_p" in bad.json()["error"]["message"]


def test_upload_refuses_paths_outside_the_session(code_server):
    def upload(name: str, data: bytes = b"a,b\n1,2\n", headers=AUTH) -> httpx.Response:
        body = {"conversation": "upload-test", "name": name, "data": base64.b64encode(data).decode()}
        return httpx.post(code_server.url + "/ui/upload", json=body, headers=headers, timeout=30)

    assert upload("data.csv", headers={}).status_code == 401
    ok = upload("data.csv")
    assert ok.status_code == 200, ok.text
    assert ok.json()["files"] == [{"name": "data.csv", "size": 8}]
    assert (code_server.workdir / "ui-upload-test" / "data.csv").read_bytes() == b"a,b\n1,2\n"
    for name in ("../escape.csv", "/etc/passwd", "sub/../../escape.csv", "..\\escape.csv"):
        refused = upload(name)
        assert refused.status_code == 400, (name, refused.text)
        assert refused.json()["error"]["param"] == "name"
    assert not (code_server.workdir / "escape.csv").exists()
    bad = httpx.post(
        code_server.url + "/ui/upload", json={"conversation": "../x", "name": "a", "data": ""}, headers=AUTH
    )
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "conversation"
    cleared = httpx.post(code_server.url + "/ui/clear", json={"conversation": "upload-test"}, headers=AUTH)
    assert cleared.json() == {"cleared": True}


def test_sessions_are_bounded_expire_and_retry_replaces_the_turn(tiny_tokenizer):
    model = scripted_model(tiny_tokenizer, ["one", "two", "three"])
    store = AgentSessions(model, AgentOptions(max_sessions=2, idle_timeout=60))
    first = store.get("a", "tools")
    store.get("b", "tools")
    assert store.get("a", "tools") is first  # a is now the most recently used
    store.get("c", "tools")
    assert "b" not in store and "a" in store and len(store) == 2

    def turn(history: list[tuple[str, str]]) -> list[dict]:
        t = AgentTurn("a", "tools", "hi", history, None, {}, 6)
        return list(_run_turn(first, t, threading.Event()))

    assert turn([])[-1]["text"] == "one"
    assert turn([])[-1]["text"] == "two"  # a retry of turn 0: replaces it
    assert [m.content for m in first.agent.messages[1:]] == ["hi", "two"]
    assert turn([("user", "hi"), ("assistant", "two")])[-1]["text"] == "three"
    assert [m.content for m in first.agent.messages[1:]] == ["hi", "two", "hi", "three"]
    store.options.idle_timeout = 0.01
    time.sleep(0.02)
    assert store.get("d", "code") and "a" not in store and len(store) == 1
    store.close()


def test_turns_answered_in_chat_mode_reach_the_agent(tiny_tokenizer):
    """Tool turn, then a chat-mode turn (the API, not the agent), then a tool turn: the agent
    sees the chat-mode turn; going back before it drops it again."""
    model = scripted_model(tiny_tokenizer, ["one", "two", "three"])
    store = AgentSessions(model, AgentOptions())
    session = store.get("a", "tools")

    def turn(query: str, history: list[tuple[str, str]]) -> str:
        t = AgentTurn("a", "tools", query, history, None, {}, 6)
        return list(_run_turn(session, t, threading.Event()))[-1]["text"]

    def texts() -> list[str]:
        return [m.content for m in session.agent.messages[1:]]

    assert turn("q0", []) == "one"
    chat_turn = [("user", "q1 in chat mode"), ("assistant", "a1 from the API")]
    assert turn("q2", [("user", "q0"), ("assistant", "one"), *chat_turn]) == "two"
    assert texts() == ["q0", "one", "q1 in chat mode", "a1 from the API", "q2", "two"]
    # The page edits turn 1 and reruns it in tool mode: turns 1 and 2 go, turn 0 stays.
    assert turn("q1 again", [("user", "q0"), ("assistant", "one")]) == "three"
    assert texts() == ["q0", "one", "q1 again", "three"]
    store.close()


def test_running_code_does_not_hold_an_api_worker(tiny_tokenizer, tmp_path):
    """A Code-mode turn whose code sleeps, with the API's generation workers cut to one: a
    chat completion is answered while the code still runs (agent turns have their own threads)."""
    from chatforge.serve.app import create_app
    from chatforge.serve.in_process import serve_in_thread
    from chatforge.serve.settings import ServeSettings

    code = "```python\nimport time\ntime.sleep(4)\nprint('slept')\n```"
    model = scripted_model(tiny_tokenizer, [code, "the API answer", "the code slept"])
    app = create_app(
        model, ServeSettings(workers=1, max_queue=4), agent_options=AgentOptions(workdir=tmp_path / "work")
    )
    with serve_in_thread(app) as url:
        events: list[dict] = []
        output_seen = threading.Event()

        def agent_turn() -> None:
            body = {"conversation": "slow", "mode": "code", "query": "sleep a bit"}
            with httpx.stream("POST", url + "/ui/agent", json=body, timeout=120) as response:
                for line in response.iter_lines():
                    if line.startswith("data:") and line[5:].strip().startswith("{"):
                        events.append(json.loads(line[5:]))
                        if events[-1]["type"] == "code":
                            output_seen.set()

        runner = threading.Thread(target=agent_turn)
        runner.start()
        assert output_seen.wait(60), events  # the code is running now
        reply = httpx.post(
            url + "/v1/chat/completions",
            json={"model": "default", "messages": [{"role": "user", "content": "hi"}]},
            timeout=60,
        )
        finished_before_the_code = not any(e["type"] == "final" for e in events)
        runner.join(60)
        assert (
            reply.status_code == 200 and reply.json()["choices"][0]["message"]["content"] == "the API answer"
        )
        assert finished_before_the_code, events
        assert events[-1] == {**events[-1], "type": "final"} and "the code slept" in json.dumps(events[-1])
