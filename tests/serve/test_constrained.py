"""Constrained decoding through the real server and the official ``openai`` client. JSON
replies come from the random tiny model and calls of ``add`` from the scripted one, which
would write a ``get_weather`` call whatever it is asked (serve_models.py): only the grammar
can make their replies valid, so a valid reply here is the constraint's doing (see
tests/constrain/ for the grammars themselves)."""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest
from constrained_tools import TOOLS

ASK = [{"role": "user", "content": "Add 2 and 3."}]
ADD = TOOLS[1]  # integers within ±999: a random model's call ends
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 6},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
    },
    "required": ["name", "age"],
    "additionalProperties": False,
}


@pytest.mark.parametrize("seed", [1, 2])
def test_response_format_json_schema(chat_server, seed):
    out = chat_server.client().chat.completions.create(
        model="default",
        messages=[{"role": "user", "content": "Who are you?"}],
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}},
        temperature=1.0,
        seed=seed,
        max_tokens=60,
    )
    jsonschema.validate(json.loads(out.choices[0].message.content), PERSON)
    assert out.choices[0].finish_reason == "stop"


def test_json_replies_stream(chat_server):
    stream = chat_server.client().chat.completions.create(
        model="default",
        messages=[{"role": "user", "content": "Say hi."}],
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}},
        temperature=0,
        max_tokens=60,
        stream=True,
    )
    pieces = [c.choices[0].delta.content for c in stream if c.choices and c.choices[0].delta.content]
    jsonschema.validate(json.loads("".join(pieces)), PERSON)
    assert len(pieces) > 1  # valid by construction, so streamed as generated, not held back


@pytest.mark.parametrize("stream", [False, True])
def test_a_named_tool_choice_gets_a_valid_call(tool_server, stream):
    kwargs = dict(
        model="scripted",
        messages=ASK,
        tools=[ADD],
        tool_choice={"type": "function", "function": {"name": "add"}},
        parallel_tool_calls=False,
        temperature=0,
        max_tokens=60,
    )
    client = tool_server.client()
    if stream:
        chunks = [c for c in client.chat.completions.create(stream=True, **kwargs) if c.choices]
        deltas = [d for c in chunks for d in (c.choices[0].delta.tool_calls or [])]
        name = deltas[0].function.name
        arguments = "".join(d.function.arguments or "" for d in deltas)
        finish = chunks[-1].choices[0].finish_reason
    else:
        choice = client.chat.completions.create(**kwargs).choices[0]
        (call,) = choice.message.tool_calls
        name, arguments, finish = call.function.name, call.function.arguments, choice.finish_reason
    assert name == "add" and finish == "tool_calls"
    jsonschema.validate(
        json.loads(arguments), {**ADD["function"]["parameters"], "additionalProperties": False}
    )


def test_tool_choice_required(tool_server):
    out = tool_server.client().chat.completions.create(
        model="scripted",
        messages=ASK,
        tools=[ADD],
        tool_choice="required",
        parallel_tool_calls=False,
        temperature=1.0,
        seed=5,
        max_tokens=60,
    )
    assert [c.function.name for c in out.choices[0].message.tool_calls] == ["add"]


def test_an_invalid_response_format_schema_is_a_400(chat_server):
    with pytest.raises(openai.BadRequestError) as err:
        chat_server.client().chat.completions.create(
            model="default",
            messages=ASK,
            response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nope"}}},
        )
    assert "response_format.json_schema.schema" in str(err.value)


def test_a_tool_schema_the_grammar_engine_cannot_compile_is_served_unconstrained(tool_server):
    odd = {
        "type": "function",
        "function": {
            "name": "tag_photos",
            "parameters": {"type": "object", "properties": {"tags": {"type": "array", "uniqueItems": True}}},
        },
    }
    out = tool_server.client().chat.completions.create(
        model="scripted", messages=ASK, tools=[odd], temperature=0, max_tokens=8
    )
    assert out.choices[0].finish_reason in ("stop", "length", "tool_calls")
    log = tool_server.log.read_text()
    assert "decoding this reply without constraints: tools[0] (tag_photos)" in log and "uniqueItems" in log
