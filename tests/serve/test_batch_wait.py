"""``chatforge serve --batch-wait-ms``: how long an idle batching engine waits for requests
sent together (see ``chatforge.engines.batching.BATCH_WAIT``)."""

from __future__ import annotations

import threading

import openai
import pytest
from tiny import step_sizes

from chatforge.cli.commands import build_parser
from chatforge.cli.serve import settings_from_args
from chatforge.engines.batching import BATCH_WAIT
from chatforge.serve.app import create_app
from chatforge.serve.in_process import serve_in_thread
from chatforge.serve.settings import ServeSettings


def serve_settings(*flags: str) -> ServeSettings:
    return settings_from_args(build_parser().parse_args(["serve", "--model", "m", *flags]))


def test_the_flag_sets_the_engines_wait(tiny_chat):
    assert tiny_chat.engine.batch_wait == BATCH_WAIT
    create_app(tiny_chat, serve_settings("--batch-wait-ms", "0"))
    assert tiny_chat.engine.batch_wait == 0
    create_app(tiny_chat, serve_settings("--batch-wait-ms", "12.5"))
    assert tiny_chat.engine.batch_wait == pytest.approx(0.0125)
    create_app(tiny_chat, serve_settings())  # not given: the engine keeps what it has
    assert tiny_chat.engine.batch_wait == pytest.approx(0.0125)


@pytest.mark.parametrize("value", ["-1", "5000"])
def test_a_wait_out_of_range_is_refused_by_name(value):
    with pytest.raises(ValueError, match="--batch-wait-ms"):
        serve_settings("--batch-wait-ms", value)


def test_requests_sent_together_through_the_server_share_the_first_pass(tiny_chat, monkeypatch):
    engine = tiny_chat.engine
    steps = step_sizes(engine, monkeypatch)
    # A wait long enough that a slow machine passes too.
    with serve_in_thread(create_app(tiny_chat, ServeSettings(ui=False, batch_wait_ms=250))) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)

        def ask(i):
            messages = [{"role": "user", "content": f"Story {i}"}]
            for _ in client.chat.completions.create(model="tiny", messages=messages, max_tokens=3, stream=True):
                pass

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    engine.close()
    assert steps[0] == 4, steps
