"""The remote engine: the wire protocol against a scripted server (no network), then real
generation through llama.cpp's OpenAI-compatible server on loopback."""

from __future__ import annotations

import json
import threading

import httpx
import pytest

from chatforge.engines.base import EngineError, SamplingParams
from chatforge.engines.remote import RemoteEngine


def sse(*events) -> bytes:
    return b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events) + b"data: [DONE]\n\n"


class Scripted:
    """A fake OpenAI-compatible server: /v1/models and a streamed /v1/completions."""

    def __init__(self, pieces, finish="stop", status=200, models=None):
        self.pieces, self.finish, self.status = pieces, finish, status
        self.models = models if models is not None else [{"id": "m1", "max_model_len": 4096}]
        self.bodies: list[dict] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"data": self.models})
        self.bodies.append(json.loads(request.content))
        if self.status != 200:
            return httpx.Response(self.status, json={"error": {"message": "prompt too long"}})
        events = [{"choices": [{"index": 0, "text": p, "finish_reason": None}]} for p in self.pieces]
        events.append({"choices": [{"index": 0, "text": "", "finish_reason": self.finish}]})
        events.append(
            {"choices": [], "usage": {"prompt_tokens": 5, "prompt_tokens_details": {"cached_tokens": 3}}}
        )
        return httpx.Response(200, content=sse(*events), headers={"content-type": "text/event-stream"})


def engine_for(server, tokenizer, **kwargs):
    return RemoteEngine("http://upstream:8000", tokenizer, transport=httpx.MockTransport(server), **kwargs)


def test_streams_text_back_as_ids_and_sends_the_rendered_prompt(tiny_tokenizer):
    server = Scripted(["你好", "，世界", " hello"])
    engine = engine_for(server, tiny_tokenizer)
    assert engine.model == "m1" and engine.context_length == 4096
    prompt = tiny_tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], add_generation_prompt=True, return_dict=False
    )
    chunks = list(
        engine.stream(prompt, SamplingParams(do_sample=False, max_new_tokens=20, stop=["<|im_end|>"]))
    )
    assert "".join(c.text for c in chunks) == "你好，世界 hello"
    assert chunks[-1].finish_reason == "stop"
    stats = chunks[-1].stats
    assert (stats.reused_tokens, stats.computed_tokens) == (3, len(prompt) - 3)
    body = server.bodies[0]
    assert body["prompt"] == tiny_tokenizer.decode(prompt, skip_special_tokens=False)
    assert body["prompt"].startswith("<|im_start|>")
    assert body["temperature"] == 0.0 and body["stream"] is True and body["stop"] == ["<|im_end|>"]
    assert body["max_tokens"] == 20 and "top_k" not in body and "repetition_penalty" not in body


def test_sampling_extensions_and_ids_prompt(tiny_tokenizer):
    server = Scripted(["a"], finish="length")
    engine = engine_for(server, tiny_tokenizer, model="m1", prompt_format="ids")
    params = SamplingParams(
        temperature=0.7,
        top_p=0.9,
        top_k=40,
        repetition_penalty=1.1,
        seed=3,
        stop_token_ids=[2],
        max_new_tokens=5,
    )
    chunks = list(engine.stream([5, 6, 7], params))
    assert chunks[-1].finish_reason == "length"
    body = server.bodies[0]
    assert body["prompt"] == [5, 6, 7]
    assert (body["top_k"], body["repetition_penalty"], body["seed"], body["stop_token_ids"]) == (
        40,
        1.1,
        3,
        [2],
    )


def test_server_errors_are_engine_errors(tiny_tokenizer):
    engine = engine_for(Scripted([], status=400), tiny_tokenizer)
    with pytest.raises(EngineError, match="HTTP 400.*prompt too long"):
        list(engine.stream([5, 6], SamplingParams(max_new_tokens=4)))
    with pytest.raises(EngineError, match="lists no model"):
        engine_for(Scripted([], models=[]), tiny_tokenizer)


def test_an_unreachable_server_says_where(tiny_tokenizer):
    def refuse(request):
        raise httpx.ConnectError("connection refused")

    with pytest.raises(
        EngineError, match="cannot reach the remote engine at http://upstream:8000/v1.*2 tries"
    ):
        engine_for(refuse, tiny_tokenizer, max_tries=2, backoff=0)  # retries: test_remote_retry.py


# -- against llama.cpp's server ------------------------------------------------------------
def test_real_server_greedy_matches_local_llama_cpp(llama_server, smollm_tokenizer, smollm_engine):
    remote = RemoteEngine(llama_server, smollm_tokenizer)
    assert remote.model == "smollm2"
    ids = smollm_tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 2+2?"}], add_generation_prompt=True, return_dict=False
    )
    params = SamplingParams(do_sample=False, max_new_tokens=16, stop=["<|im_end|>"])
    chunks = list(remote.stream(ids, params))
    text = "".join(c.text for c in chunks)
    local = "".join(c.text for c in smollm_engine.stream(ids, params))
    assert text == local == "The answer to this classic math problem is 4."
    assert chunks[-1].finish_reason == "stop"
    remote.close()


def test_real_server_behind_the_chat_api(llama_server, smollm_tokenizer):
    from chatforge.chat import ChatModel
    from chatforge.templates import get_template

    remote = RemoteEngine(llama_server, smollm_tokenizer, model="smollm2")
    model = ChatModel(remote, get_template("auto", smollm_tokenizer), name="remote")
    session = model.session()
    reply = session.send(
        "What is the capital of France? Answer in one word.", do_sample=False, max_new_tokens=20
    )
    assert "Paris" in reply.content
    assert session.last_stats.finish_reason == "stop"  # the server stopped at <|im_end|>
    cancel = threading.Event()
    events = model.generate(session.messages + [], cancel=cancel, do_sample=False, max_new_tokens=200)
    next(events)
    cancel.set()
    last = list(events)[-1]
    assert last.stats.finish_reason == "cancelled"
    remote.close()


# -- against another chatforge ---------------------------------------------------------------
@pytest.fixture()
def chatforge_server(tiny_chat):
    """``chatforge serve``'s app on loopback, serving the tiny model."""
    pytest.importorskip("uvicorn")
    try:
        from chatforge.serve.app import create_app
        from chatforge.serve.settings import ServeSettings
    except ImportError as err:
        pytest.skip(f"chatforge's server is not part of this build: {err}")
    from chatforge.serve.in_process import serve_in_thread

    with serve_in_thread(create_app(tiny_chat, ServeSettings(ui=False))) as url:
        yield f"{url}/v1"


def test_another_chatforge_as_the_upstream(chatforge_server, tiny_chat, tiny_tokenizer):
    remote = RemoteEngine(chatforge_server, tiny_tokenizer)
    ids = tiny_tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hello, how are you?"}], add_generation_prompt=True, return_dict=False
    )
    params = SamplingParams(do_sample=False, max_new_tokens=12)
    text = "".join(c.text for c in remote.stream(ids, params))
    local = "".join(c.text for c in tiny_chat.engine.stream(ids, params))
    assert text == local and text
    remote.close()
