"""Evaluation: greedy replies through ChatModel, scored and written as JSONL."""

from __future__ import annotations

import json

import pytest

from chatforge.messages import Message, Role, ToolCall
from chatforge.train.data import load_samples
from chatforge.train.evaluate import evaluate, split_reference, tool_call_checks


def test_evaluate_writes_predictions_and_means(tiny_chat, tmp_path):
    data = tmp_path / "test.jsonl"
    rows = [
        {"prompt": "Hello", "response": "Hi there", "keywords": ["hi"]},
        {
            "conversations": [
                {"role": "user", "content": "a"},
                {"role": "assistant", "content": "b"},
                {"role": "user", "content": "你好"},
                {"role": "assistant", "content": "你好！"},
            ]
        },
    ]
    data.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows))
    samples, _ = load_samples(data)
    prompt, reference = split_reference(samples[1])
    assert [m.content for m in prompt] == ["a", "b", "你好"] and reference == "你好！"
    out = tmp_path / "pred.jsonl"
    result = evaluate(tiny_chat, samples, max_new_tokens=4, predictions_file=out)
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["reference"] for r in lines] == ["Hi there", "你好！"]
    assert {"bleu-4", "rouge-1", "rouge-2", "rouge-l", "exact_match", "keyword_recall"} <= set(result.metrics)
    assert "keyword_recall" in lines[0] and "keyword_recall" not in lines[1]


WEATHER = {
    "name": "get_weather",
    "description": "Current weather of a city",
    "parameters": {
        "type": "object",
        "properties": {"city_name": {"type": "string"}},
        "required": ["city_name"],
    },
}


def call(name, **arguments):
    return Message(Role.ASSISTANT, "", tool_calls=[ToolCall(name, arguments)])


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (call("get_weather", city_name="Sydney"), (100.0, 100.0, 100.0)),
        (call("get_weather", city="Sydney"), (100.0, 0.0, 100.0)),  # required argument missing
        (call("get_weather", city_name=3), (100.0, 0.0, 100.0)),  # wrong type
        (call("get_forecast", city_name="Sydney"), (100.0, 0.0, 0.0)),  # no such tool
        (Message(Role.ASSISTANT, '{"name": "get_weather"'), (0.0, 0.0, 0.0)),  # nothing parsed
    ],
)
def test_tool_call_checks_parse_and_validate_against_the_schema(reply, expected):
    reference = call("get_weather", city_name="Sydney")
    checks = tool_call_checks(reply, [{"type": "function", "function": WEATHER}], reference)
    assert (checks["tool_call_parsed"], checks["tool_call_valid"], checks["tool_name_match"]) == expected


def test_evaluate_scores_tool_calls_only_where_the_reference_is_one(tiny_chat, tmp_path):
    data = tmp_path / "tools.jsonl"
    rows = [
        {
            "tools": [WEATHER],
            "conversations": [
                {"role": "user", "content": "Weather in Sydney?"},
                {
                    "role": "tool",
                    "name": "get_weather",
                    "parameters": {"city_name": "Sydney"},
                    "observation": {},
                },
            ],
        },
        {"prompt": "Hello", "response": "Hi there"},
    ]
    data.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows))
    samples, _ = load_samples(data)
    result = evaluate(tiny_chat, samples, max_new_tokens=4, predictions_file=tmp_path / "pred.jsonl")
    lines = [json.loads(x) for x in (tmp_path / "pred.jsonl").read_text().splitlines()]
    assert lines[0]["tool_call_parsed"] == 0.0  # a random tiny model writes no call
    assert "tool_call_parsed" not in lines[1]
    assert result.metrics["tool_call_valid"] == 0.0
