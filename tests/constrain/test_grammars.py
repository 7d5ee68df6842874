"""What the grammars accept, token by token, on a tokenizer with Qwen's tool-call tags."""

from __future__ import annotations

import json

import pytest
from constrained_tools import TOOLS

from chatforge.constrain import GrammarError, check_grammar, check_tools, json_grammar, tighten, tool_grammar
from chatforge.constrain.grammars import tag
from chatforge.constrain.matcher import Constraint, grammar_tokenizer

SPECIAL = ("<tool_call>", "</tool_call>")
CALL = {"name": "get_weather", "arguments": {"city": "Paris"}}
ADD = {"name": "add", "arguments": {"a": 2, "b": 3}}


def accepts(tokenizer, grammar: str, text: str) -> bool:
    """Whether ``text`` is a whole reply the grammar allows (then the end-of-turn token)."""
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    view = grammar_tokenizer(tokenizer, [end])
    check_grammar(grammar, view)
    constraint = Constraint(view, grammar, [end])
    for token in [*tokenizer.encode(text, add_special_tokens=False), end]:
        if not constraint.allows(token):
            return False
        constraint.consume(token)
    return True


def tagged(*calls: dict) -> str:
    return "\n".join(f"<tool_call>\n{json.dumps(c)}\n</tool_call>" for c in calls)


@pytest.fixture(scope="module")
def auto():
    return tool_grammar(TOOLS, tags=SPECIAL)


@pytest.mark.parametrize(
    "reply",
    [
        "It is sunny in Paris today.",
        "Run this:\n```python\nprint(1)\n```\nThat prints 1.",
        "北京今天晴天。",
        tagged(CALL),
        tagged(CALL, ADD),
        "Let me look.\n" + tagged(CALL),
        f"```json\n{json.dumps(CALL)}\n```",
        f"```json\n[{json.dumps(CALL)}, {json.dumps(ADD)}]\n```",
        f"I will call it:\n```json\n{json.dumps(ADD)}\n```",
        json.dumps(CALL),
        json.dumps([CALL, ADD]),
        tagged({"name": "get_weather", "arguments": {"city": "Rome", "unit": "celsius"}}),
    ],
)
def test_text_and_valid_calls_are_allowed(tagged_tokenizer, auto, reply):
    assert accepts(tagged_tokenizer, auto, reply)


@pytest.mark.parametrize(
    "reply",
    [
        # The invented argument the 0.5B model once wrote ("type": "object").
        tagged({"name": "get_weather", "arguments": {"city": "Paris", "type": "object"}}),
        tagged({"name": "get_weather", "arguments": {"unit": "celsius"}}),  # required city missing
        tagged({"name": "get_weather", "arguments": {"city": "Paris", "unit": "kelvin"}}),  # not in the enum
        tagged({"name": "add", "arguments": {"a": "2", "b": 3}}),  # a string for an integer
        tagged({"name": "get_time", "arguments": {}}),  # no such tool
        tagged(CALL) + "\nDone.",  # text after the calls
        '{"a": 1}',  # JSON that is no call
        f"```json\n{json.dumps({'city': 'Paris'})}\n```",
    ],
)
def test_invalid_calls_are_not(tagged_tokenizer, auto, reply):
    assert not accepts(tagged_tokenizer, auto, reply)


def test_one_call_when_parallel_calls_are_off(tagged_tokenizer):
    single = tool_grammar(TOOLS, tags=SPECIAL, parallel=False)
    assert accepts(tagged_tokenizer, single, tagged(CALL))
    assert not accepts(tagged_tokenizer, single, tagged(CALL, ADD))
    assert not accepts(tagged_tokenizer, single, json.dumps([CALL, ADD]))


def test_a_required_call_excludes_text(tagged_tokenizer):
    required = tool_grammar(TOOLS, tags=SPECIAL, force="*")
    assert accepts(tagged_tokenizer, required, tagged(ADD))
    assert accepts(tagged_tokenizer, required, f"```json\n{json.dumps(ADD)}\n```")
    assert not accepts(tagged_tokenizer, required, "The weather is fine.")
    named = tool_grammar(TOOLS, tags=SPECIAL, force="add")
    assert accepts(tagged_tokenizer, named, tagged(ADD))
    assert not accepts(tagged_tokenizer, named, tagged(CALL))
    with pytest.raises(GrammarError, match="no tool named 'nope'"):
        tool_grammar(TOOLS, tags=SPECIAL, force="nope")


def test_tags_written_as_text(tiny_tokenizer):
    """A tokenizer without tag tokens: the tags are text, and text may not hide one."""
    grammar = tool_grammar(TOOLS, tags=(tag("<tool_call>", False), tag("</tool_call>", False)))
    assert accepts(tiny_tokenizer, grammar, tagged(CALL))
    assert accepts(tiny_tokenizer, grammar, "Hello there.")
    assert not accepts(tiny_tokenizer, grammar, "Sure <tool_call>\nnonsense\n</tool_call>")


def test_json_replies(tagged_tokenizer):
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"],
    }
    grammar = json_grammar(schema)
    assert accepts(tagged_tokenizer, grammar, '{"name": "Ada", "age": 36}')
    assert not accepts(tagged_tokenizer, grammar, '{"name": "Ada"}')
    assert not accepts(tagged_tokenizer, grammar, "Ada is 36.")
    anything = json_grammar(None)
    assert accepts(tagged_tokenizer, anything, '{"x": [1, 2, {"y": null}]}')
    assert not accepts(tagged_tokenizer, anything, "[1, 2]")


def test_tighten_forbids_unknown_keys_only_where_properties_are_listed():
    schema = {
        "type": "object",
        "properties": {
            "inner": {"type": "object", "properties": {"x": {"type": "number"}}},
            "free": {"type": "object"},
            "open": {"type": "object", "properties": {}, "additionalProperties": True},
            "list": {"type": "array", "items": {"type": "object", "properties": {"y": {"type": "string"}}}},
        },
    }
    out = tighten(schema)
    assert out["additionalProperties"] is False
    assert out["properties"]["inner"]["additionalProperties"] is False
    assert "additionalProperties" not in out["properties"]["free"]
    assert out["properties"]["open"]["additionalProperties"] is True
    assert out["properties"]["list"]["items"]["additionalProperties"] is False
    assert "additionalProperties" not in schema  # the caller's schema is left as it was


def test_a_schema_the_engine_cannot_compile_is_named():
    bad = {
        "type": "function",
        "function": {
            "name": "book",
            "parameters": {"type": "object", "properties": {"tags": {"type": "array", "uniqueItems": True}}},
        },
    }
    with pytest.raises(GrammarError, match=r"tools\[2\] \(book\): .*uniqueItems"):
        check_tools([*TOOLS, bad])


def test_a_name_no_offered_tool_has_is_noticed(tagged_tokenizer, auto):
    """Where a function name begins, a model that wants a name no tool has is noticed; one
    that wants an offered name is not."""
    import numpy as np

    end = tagged_tokenizer.convert_tokens_to_ids("<|im_end|>")
    view = grammar_tokenizer(tagged_tokenizer, [end])
    made_up = tagged_tokenizer.encode("integrate", add_special_tokens=False)[0]
    offered = tagged_tokenizer.encode("add", add_special_tokens=False)[0]
    for wanted, noticed in ((made_up, True), (offered, False)):
        constraint = Constraint(view, auto, [end])
        for token in tagged_tokenizer.encode('<tool_call>\n{"name": "', add_special_tokens=False):
            constraint.consume(token)
        logits = np.zeros(view.vocab_size, dtype=np.float32)
        logits[wanted] = 20.0
        if not constraint.allows(wanted):
            constraint.restrict(logits)
        assert constraint.unknown_tool is noticed
