"""A tiny random model, constrained: whatever it would write, its calls and JSON replies are
valid (the sampler picks among allowed tokens only), through ``ChatModel`` and the
transformers engine's batching worker, which every local engine samples with."""

from __future__ import annotations

import json
import logging

import jsonschema
import pytest
from constrained_tools import TOOLS

from chatforge.chat import AUTO
from chatforge.constrain import GrammarError, tighten
from chatforge.messages import Message, Role

ASK = [Message(Role.USER, "What is the weather in Paris? And what is 2 plus 3?")]
SCHEMAS = {t["function"]["name"]: tighten(t["function"]["parameters"]) for t in TOOLS}
SEEDS = range(4)


def sampled(seed: int) -> dict:
    return {"temperature": 1.0, "do_sample": True, "seed": seed, "max_new_tokens": 200}


def assert_valid_calls(message: Message, names: set[str]) -> None:
    for call in message.tool_calls:
        assert call.name in names
        jsonschema.validate(call.arguments, SCHEMAS[call.name])


@pytest.mark.parametrize("seed", SEEDS)
def test_a_required_call_is_made_and_valid(tagged_chat, seed):
    # One call: a random model, free to go on, makes call after call.
    grammar = tagged_chat.grammar_for(TOOLS, force="*", parallel=False)
    message, stats = tagged_chat.reply(ASK, TOOLS, grammar=grammar, **sampled(seed))
    assert stats.finish_reason == "stop", message.content
    assert message.tool_calls and message.content == ""
    assert_valid_calls(message, set(SCHEMAS))


@pytest.mark.parametrize("seed", SEEDS[:3])
def test_a_named_call_and_one_call_only(tagged_chat, seed):
    grammar = tagged_chat.grammar_for(TOOLS, force="add", parallel=False)
    message, _ = tagged_chat.reply(ASK, TOOLS, grammar=grammar, **sampled(seed))
    assert [c.name for c in message.tool_calls] == ["add"]
    assert_valid_calls(message, {"add"})


@pytest.mark.parametrize("seed", SEEDS)
def test_json_replies_follow_their_schema(tagged_chat, seed):
    schema = {
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 10},
            "sunny": {"type": "boolean"},
            "temperature": {"type": "integer", "minimum": -50, "maximum": 60},
        },
        "required": ["city", "sunny", "temperature"],
        "additionalProperties": False,
    }
    grammar = tagged_chat.grammar_for(json_mode=True, json_schema=schema)
    message, _ = tagged_chat.reply(ASK, grammar=grammar, **sampled(seed))
    jsonschema.validate(json.loads(message.content), schema)


@pytest.mark.parametrize("seed", SEEDS)
def test_tools_offered_text_or_valid_calls_by_default(tagged_chat, seed):
    """``generate`` constrains calls by default whenever tools are offered (the agent loop's path)."""
    message, _ = tagged_chat.reply(ASK, TOOLS, **sampled(seed))
    assert_valid_calls(message, set(SCHEMAS))


def test_constraints_off(tagged_chat):
    tagged_chat.constrain = False
    assert tagged_chat.grammar_for(TOOLS, force="*") is None
    assert tagged_chat.grammar_for(json_mode=True) is None


def test_a_tool_schema_that_cannot_be_compiled_falls_back_with_a_warning(tagged_chat, caplog):
    odd = {
        "type": "function",
        "function": {
            "name": "tag",
            "parameters": {"type": "object", "properties": {"tags": {"type": "array", "uniqueItems": True}}},
        },
    }
    with pytest.raises(GrammarError, match="tag"):
        tagged_chat.grammar_for([odd])
    with caplog.at_level(logging.WARNING):
        message, stats = tagged_chat.reply(ASK, [odd], grammar=AUTO, max_new_tokens=8, do_sample=False)
    assert stats.completion_tokens > 0
    assert "not constrained" in caplog.text and "uniqueItems" in caplog.text
