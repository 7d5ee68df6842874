"""Record formats → messages, and invalid records reported with file, line and field."""

from __future__ import annotations

import json

import pytest

from chatforge.messages import Role
from chatforge.train.data import DataError, FormatOptions, load_samples, to_sample


def write_jsonl(path, records):
    path.write_text(
        "\n".join(r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) for r in records) + "\n"
    )
    return path


GOOD = {"conversations": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}


def roles(sample):
    return [m.role for m in sample.messages]


def test_openai_format_with_tool_calls():
    record = {
        "messages": [
            {"role": "user", "content": "Weather?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"id": "c1", "function": {"name": "w", "arguments": '{"city": "Paris"}'}}],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
            {"role": "assistant", "content": "Sunny."},
        ],
        "tools": [{"type": "function", "function": {"name": "w", "parameters": {"type": "object"}}}],
    }
    fmt, sample = to_sample(record, FormatOptions())
    assert fmt == "openai"
    assert roles(sample) == [Role.USER, Role.ASSISTANT, Role.OBSERVATION, Role.ASSISTANT]
    assert sample.messages[1].tool_calls[0].arguments == {"city": "Paris"}


def test_sharegpt_format():
    record = {
        "system": "Be kind.",
        "conversations": [
            {"from": "human", "value": "Weather?"},
            {"from": "function_call", "value": '{"name": "w", "arguments": {"city": "Paris"}}'},
            {"from": "observation", "value": "sunny"},
            {"from": "gpt", "value": "Sunny."},
        ],
        "tools": '[{"name": "w", "parameters": {"type": "object"}}]',
    }
    fmt, sample = to_sample(record, FormatOptions())
    assert fmt == "sharegpt"
    assert roles(sample) == [Role.SYSTEM, Role.USER, Role.ASSISTANT, Role.OBSERVATION, Role.ASSISTANT]
    assert sample.messages[2].tool_calls[0].name == "w"
    assert sample.tools == [{"name": "w", "parameters": {"type": "object"}}]


def test_alpaca_format_with_history():
    record = {
        "instruction": "Translate",
        "input": "你好",
        "output": "Hello",
        "history": [["q", "a"]],
        "system": "S",
    }
    fmt, sample = to_sample(record, FormatOptions())
    assert fmt == "alpaca"
    assert [(m.role.value, m.content) for m in sample.messages] == [
        ("system", "S"),
        ("user", "q"),
        ("assistant", "a"),
        ("user", "Translate\n你好"),
        ("assistant", "Hello"),
    ]


def test_prompt_response_with_configurable_columns():
    fmt, sample = to_sample(
        {"content": "类型#裙", "summary": "一条裙子"},
        FormatOptions(prompt_column="content", response_column="summary"),
    )
    assert fmt == "prompt_response"
    assert [(m.role.value, m.content) for m in sample.messages] == [
        ("user", "类型#裙"),
        ("assistant", "一条裙子"),
    ]


def test_csv_prompt_response(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text('prompt,response\n"a, b",yes\nq2,\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"data.csv:3: response: must not be empty"):
        load_samples(path)
    samples, report = load_samples(path, skip_invalid=True)
    assert [s.messages[0].content for s in samples] == ["a, b"] and report.skipped == 1


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"conversations": [{"role": "bot", "content": "x"}]}, "conversations[0].role: unknown role 'bot'"),
        ({"conversations": []}, "conversations: conversation is empty"),
        ({"conversations": [{"role": "user", "content": "only a question"}]}, "no assistant turn"),
        (
            {
                "conversations": [
                    {"role": "user", "content": "q"},
                    {"role": "system", "content": "s"},
                    {"role": "assistant", "content": "a"},
                ]
            },
            "conversations[1]: the system turn must come first",
        ),
        ({"conversations": [{"role": "tool", "parameters": {}}]}, "conversations[0].name: a tool turn needs"),
        (
            {"conversations": [{"role": "assistant", "content": "a", "loss": "yes"}]},
            "conversations[0].loss: expected true or false",
        ),
        ({"text": "hello"}, "cannot tell the record format"),
        ([1, 2], "expected a JSON object"),
    ],
)
def test_invalid_records_name_line_and_field(tmp_path, record, message):
    path = write_jsonl(tmp_path / "train.jsonl", [GOOD, record])
    with pytest.raises(DataError) as err:
        load_samples(path)
    assert f"train.jsonl:2: {message}" in str(err.value)


def test_truncated_jsonl_line(tmp_path):
    path = write_jsonl(
        tmp_path / "train.jsonl", [GOOD, GOOD, '{"conversations": [{"role": "user", "content": "hi"']
    )
    with pytest.raises(DataError, match=r"train.jsonl:3: truncated JSON"):
        load_samples(path)


def test_non_utf8_line_is_named(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_bytes(
        json.dumps(GOOD).encode()
        + b"\n"
        + '{"prompt": "caf\u00e9", "response": "x"}'.encode("latin-1")
        + b"\n"
    )
    with pytest.raises(DataError, match=r"train.jsonl:2: not valid UTF-8 \(byte 0xe9"):
        load_samples(path)


def test_non_utf8_json_file(tmp_path):
    path = tmp_path / "train.json"
    path.write_bytes(b'[\n  {"prompt": "a", "response": "b"},\n  {"prompt": "caf\xe9", "response": "x"}\n]')
    with pytest.raises(DataError, match=r"train.json:3: not valid UTF-8"):
        load_samples(path)


def test_json_array_records_carry_their_line(tmp_path):
    path = tmp_path / "train.json"
    bad = {"conversations": [{"role": "bot"}]}
    path.write_text(f"[\n{json.dumps(GOOD)},\n{json.dumps(GOOD)},\n\n{json.dumps(bad)}\n]\n")
    with pytest.raises(DataError, match=r"train.json:5: conversations\[0\].role: unknown role 'bot'"):
        load_samples(path)


def test_truncated_json_array(tmp_path):
    path = tmp_path / "train.json"
    path.write_text(f"[\n{json.dumps(GOOD)},\n{json.dumps(GOOD)[:-5]}")
    with pytest.raises(DataError, match=r"train.json:3: invalid JSON"):
        load_samples(path)


def test_all_errors_reported_up_to_a_cap(tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", [GOOD] + [{"conversations": []}] * 30)
    with pytest.raises(DataError) as err:
        load_samples(path, max_errors=5)
    text = str(err.value)
    assert text.startswith("30 invalid record(s) of 31")
    assert "train.jsonl:6:" in text and "train.jsonl:7:" not in text and "... and 25 more" in text


def test_skip_invalid_counts_and_explains(tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", [GOOD, {"conversations": []}, "{broken", GOOD])
    samples, report = load_samples(path, skip_invalid=True)
    assert len(samples) == 2 and report.records == 4 and report.skipped == 2
    assert [s.line for s in samples] == [1, 4]
    assert sum(report.reasons().values()) == 2
