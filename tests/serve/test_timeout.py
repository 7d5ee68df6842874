"""``--request-timeout``: a generation that runs past it is cancelled and answered with a
504 (a JSON error, or an error event once a stream has started), and the server goes on
serving."""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from chatforge.serve.app import create_app
from chatforge.serve.in_process import serve_in_thread
from chatforge.serve.settings import ServeSettings

TIMEOUT = 0.6


@pytest.fixture()
def slow_server(tiny_chat):
    """The tiny model at 20 steps a second, behind a server whose requests may take 0.6 s."""
    engine = tiny_chat.engine
    forward = engine._forward

    def slow(work):
        time.sleep(0.05)
        return forward(work)

    engine._forward = slow
    with serve_in_thread(create_app(tiny_chat, ServeSettings(ui=False, request_timeout=TIMEOUT))) as url:
        yield url, engine
    engine.close()


def ask(url: str, **kwargs):
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)
    return client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "Tell me a long story."}], **kwargs
    )


def idle(engine, within: float = 5.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not engine._active and not engine._waiting:
            return True
        time.sleep(0.05)
    return False


def test_a_request_past_the_timeout_gets_a_504_and_its_generation_stops(slow_server):
    url, engine = slow_server
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as caught:
        ask(url, max_tokens=200, temperature=0)  # 10 s of generation
    assert caught.value.status_code == 504
    assert f"longer than {TIMEOUT:g} s" in caught.value.message
    assert time.monotonic() - started < 5
    assert idle(engine)  # cancelled, not left running for its 200 tokens
    assert ask(url, max_tokens=2, temperature=0).choices[0].message.content is not None


def test_a_stream_past_the_timeout_ends_with_a_timeout_error_event(slow_server):
    url, engine = slow_server
    body = {
        "model": "tiny",
        "messages": [{"role": "user", "content": "Tell me a long story."}],
        "max_tokens": 200,
        "temperature": 0,
        "stream": True,
    }
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=30) as response:
        assert response.status_code == 200  # the stream started before the deadline
        events = [line[5:].strip() for line in response.iter_lines() if line.startswith("data:")]
    deltas = [e for e in events if '"delta"' in e and '"content"' in e]
    assert len(deltas) >= 2  # tokens came before the deadline
    errors = [e for e in events if '"error"' in e]
    assert len(errors) == 1 and '"timeout"' in errors[0] and events[-1] == "[DONE]"
    assert idle(engine)
    assert ask(url, max_tokens=2, temperature=0, stream=True) is not None
