"""Constrained decoding on the real embedded default model (greedy, llama.cpp): the call
the issue saw go wrong, a plain answer unchanged by the grammar, and JSON on request.
Marked ``integration``."""

from __future__ import annotations

import json

import jsonschema
import pytest

from chatforge.messages import Message, Role

pytestmark = pytest.mark.integration

CALCULATOR = {
    "type": "function",
    "function": {
        "name": "calculator",
        "description": "Evaluate an arithmetic expression",
        "parameters": {
            "type": "object",
            "properties": {"expression": {"type": "string", "description": "the expression, e.g. 2*(3+4)"}},
            "required": ["expression"],
        },
    },
}
GREEDY = {"do_sample": False, "max_new_tokens": 120}


def ask(text: str) -> list[Message]:
    return [Message(Role.USER, text)]


def test_the_calculator_call_has_only_its_declared_argument(default_model):
    """Unconstrained, the model once added ``"type": "object"`` to these arguments."""
    message, _ = default_model.reply(
        ask("What is 37 times 49 plus 12? Use the calculator."), [CALCULATOR], **GREEDY
    )
    (call,) = message.tool_calls
    assert call.name == "calculator" and set(call.arguments) == {"expression"}
    jsonschema.validate(
        call.arguments, {**CALCULATOR["function"]["parameters"], "additionalProperties": False}
    )


@pytest.mark.parametrize("question", ["Hello! Who are you?", "用一句话介绍一下北京。"])
def test_a_text_answer_is_the_unconstrained_one_token_for_token(default_model, question):
    constrained, _ = default_model.reply(ask(question), [CALCULATOR], **GREEDY)
    plain, _ = default_model.reply(ask(question), [CALCULATOR], grammar=None, **GREEDY)
    assert not constrained.tool_calls and constrained.content == plain.content


def test_json_on_request(default_model):
    schema = {
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "country": {"type": "string"},
            "population_millions": {"type": "number"},
        },
        "required": ["city", "country", "population_millions"],
    }
    grammar = default_model.grammar_for(json_mode=True, json_schema=schema)
    message, _ = default_model.reply(ask("Describe Paris as JSON."), grammar=grammar, **GREEDY)
    jsonschema.validate(json.loads(message.content), schema)
    anything = default_model.grammar_for(json_mode=True)
    message, _ = default_model.reply(ask("List three colours as a JSON object."), grammar=anything, **GREEDY)
    assert isinstance(json.loads(message.content), dict)


def test_a_question_no_tool_fits_gets_text_not_a_bent_call(default_model, caplog):
    """BFCL's irrelevance_8: the model "calls" an integration tool it makes up; the grammar
    must not turn that into a call of the one tool offered (str_to_int)."""
    str_to_int = {
        "type": "function",
        "function": {
            "name": "str_to_int",
            "description": "Converts string value to integer.",
            "parameters": {
                "type": "object",
                "properties": {"value": {"type": "string", "description": "String value to be converted to integer"}},
                "required": ["value"],
            },
        },
    }
    with caplog.at_level("INFO", logger="chatforge.chat"):
        message, _ = default_model.reply(ask("Find the integral of x^3 from 1 to 5"), [str_to_int], **GREEDY)
    assert not message.tool_calls and message.content.strip()
    assert "not offered" in caplog.text
