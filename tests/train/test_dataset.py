"""Data format → messages → labels, truncation, packing and collation (tiny ChatML tokenizer)."""

from __future__ import annotations

import pytest
import torch

from chatforge.messages import Message, Role
from chatforge.templates import IGNORE_INDEX, get_template
from chatforge.train.data import FormatOptions, Sample, to_sample
from chatforge.train.dataset import (
    Collator,
    TokenStats,
    encode_sample,
    pack,
    render_sample,
)

WEATHER = {
    "name": "get_weather",
    "description": "Weather of a city",
    "parameters": {"type": "object", "properties": {"city_name": {"type": "string"}}},
}
TOOL_CONVERSATION = {
    "tools": [WEATHER],
    "conversations": [
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Hi!"},
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "tool",
            "name": "get_weather",
            "parameters": {"city_name": "Paris"},
            "observation": {"temp": 20},
        },
        {"role": "assistant", "content": "It is sunny."},
    ],
}
TOOL_CALL_TEXT = (
    '<tool_call>\n{"name": "get_weather", "arguments": {"city_name": "Paris"}}\n</tool_call><|im_end|>'
)


def trained_spans(tokenizer, ex) -> list[str]:
    spans, cur = [], []
    for label in [*ex.labels, IGNORE_INDEX]:
        if label != IGNORE_INDEX:
            cur.append(label)
        elif cur:
            spans.append(tokenizer.decode(cur))
            cur = []
    return spans


@pytest.fixture()
def template(tiny_tokenizer):
    return get_template("hf", tiny_tokenizer)


def test_three_turn_tool_conversation_has_exact_labels(tiny_tokenizer, template):
    _, sample = to_sample(TOOL_CONVERSATION, FormatOptions())
    ex = render_sample(sample, template)
    text = tiny_tokenizer.decode(ex.input_ids)
    # Expected ids and labels built independently: the text cut into prompt and trained pieces.
    head, rest = text.split("Hi!<|im_end|>", 1)
    mid, rest = rest.split("\n" + TOOL_CALL_TEXT, 1)
    obs, tail = rest.split("It is sunny.<|im_end|>", 1)
    pieces = [
        (head, False),
        ("Hi!", True),
        ("<|im_end|>", True),
        (mid + "\n", False),
        (TOOL_CALL_TEXT.removesuffix("<|im_end|>"), True),
        ("<|im_end|>", True),
        (obs, False),
        ("It is sunny.", True),
        ("<|im_end|>", True),
        (tail, False),
    ]
    ids, labels = [], []
    for piece, trained in pieces:
        piece_ids = tiny_tokenizer.encode(piece, add_special_tokens=False)
        ids += piece_ids
        labels += piece_ids if trained else [IGNORE_INDEX] * len(piece_ids)
    assert ex.input_ids == ids
    assert ex.labels == labels
    assert trained_spans(tiny_tokenizer, ex) == ["Hi!<|im_end|>", TOOL_CALL_TEXT, "It is sunny.<|im_end|>"]
    assert tail == "\n"
    # The observation turn is never trained.
    assert '{"temp": 20}' in obs


def test_tool_turn_expands_into_call_and_observation():
    _, sample = to_sample(TOOL_CONVERSATION, FormatOptions())
    roles = [m.role for m in sample.messages]
    assert roles == [Role.USER, Role.ASSISTANT, Role.USER, Role.ASSISTANT, Role.OBSERVATION, Role.ASSISTANT]
    call = sample.messages[3].tool_calls[0]
    assert (call.name, call.arguments) == ("get_weather", {"city_name": "Paris"})
    assert sample.messages[4].content == '{"temp": 20}'
    assert sample.messages[4].tool_call_id == call.id
    assert sample.tools == [WEATHER]


def test_loss_overrides_per_message(tiny_tokenizer, template):
    record = {
        "conversations": [
            {"role": "user", "content": "Hello"},
            {"role": "assistant", "content": "Hi!", "loss": False},
            {"role": "user", "content": "Weather in Paris?", "loss": True},
            {"role": "assistant", "content": "It is sunny."},
        ]
    }
    _, sample = to_sample(record, FormatOptions())
    ex = render_sample(sample, template)
    # A user turn with loss true trains its content; the assistant turn with false is not trained.
    assert trained_spans(tiny_tokenizer, ex) == ["Weather in Paris?", "It is sunny.<|im_end|>"]


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("last", ["It is sunny.<|im_end|>"]),
        ("assistant", ["Hi!<|im_end|>", TOOL_CALL_TEXT, "It is sunny.<|im_end|>"]),
    ],
)
def test_loss_modes(tiny_tokenizer, template, mode, expected):
    _, sample = to_sample(TOOL_CONVERSATION, FormatOptions())
    assert trained_spans(tiny_tokenizer, render_sample(sample, template, mode)) == expected


def test_loss_mode_all_trains_every_token(tiny_tokenizer, template):
    _, sample = to_sample(TOOL_CONVERSATION, FormatOptions())
    ex = render_sample(sample, template, "all")
    assert ex.labels == ex.input_ids


def test_plain_prompt_response_has_no_markup(tiny_tokenizer, template):
    _, sample = to_sample({"prompt": "Hello", "response": "Hi!"}, FormatOptions(plain=True))
    ex = render_sample(sample, template)
    assert tiny_tokenizer.decode(ex.input_ids) == "HelloHi!<|im_end|>"
    assert trained_spans(tiny_tokenizer, ex) == ["Hi!<|im_end|>"]


def _rounds(n: int, system: bool = True) -> Sample:
    messages = [Message(Role.SYSTEM, "Be brief.")] if system else []
    for i in range(n):
        messages += [Message(Role.USER, f"Question number {i}?"), Message(Role.ASSISTANT, f"Answer {i}.")]
    return Sample(messages, source="x.jsonl", line=1)


def test_truncation_drops_whole_oldest_turns_and_keeps_system(tiny_tokenizer, template):
    sample = _rounds(4)
    full = len(render_sample(sample, template).input_ids)
    two_rounds = len(render_sample(Sample([sample.messages[0], *sample.messages[5:]]), template).input_ids)
    stats = TokenStats()
    ex = encode_sample(sample, template, max_length=two_rounds, stats=stats)
    assert full > two_rounds
    assert len(ex.input_ids) == two_rounds
    text = tiny_tokenizer.decode(ex.input_ids)
    assert text.startswith("<|im_start|>system\nBe brief.")
    assert "Question number 1" not in text and "Answer 3." in text
    assert (stats.turns_dropped, stats.samples_with_dropped_turns, stats.samples_cut) == (4, 1, 0)


def test_truncation_cuts_when_one_round_is_still_too_long(template):
    stats = TokenStats()
    full = render_sample(_rounds(1), template)
    ex = encode_sample(_rounds(1), template, max_length=len(full.input_ids) - 2, stats=stats)
    assert ex is not None and ex.input_ids == full.input_ids[:-2]
    assert stats.samples_cut == 1


def test_sample_with_nothing_left_to_train_is_counted_not_silently_dropped(template):
    stats = TokenStats()
    assert encode_sample(_rounds(1), template, max_length=8, stats=stats) is None
    assert sum(stats.dropped.values()) == 1


def test_truncation_error_mode_names_the_sample(template):
    from chatforge.train.dataset import TruncationError

    with pytest.raises(TruncationError, match=r"x.jsonl:1: .* data.max_length 8"):
        encode_sample(_rounds(1), template, max_length=8, truncation="error")


def test_collator_pads_labels_with_ignore_index():
    batch = Collator(pad_id=0)(
        [{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8], "labels": [8]}]
    )
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


def test_packing_equals_unpacked(tiny_tokenizer, tiny_model, template):
    samples = [_rounds(1, system=False), _rounds(2), _rounds(1)]
    examples = [encode_sample(s, template, 512) for s in samples]
    rows = pack(examples, max_length=512)
    assert len(rows) == 1 and rows[0].position_ids.count(0) == 3
    batch = Collator(pad_id=tiny_tokenizer.pad_token_id)(
        [{"input_ids": r.input_ids, "labels": r.labels, "position_ids": r.position_ids} for r in rows]
    )
    assert "attention_mask" not in batch
    with torch.no_grad():
        packed = tiny_model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False)
        start = 0
        loss_sum, count = 0.0, 0
        for ex in examples:
            ids = torch.tensor([ex.input_ids])
            alone = tiny_model(input_ids=ids, labels=torch.tensor([ex.labels]), use_cache=False)
            n = len(ex.input_ids)
            torch.testing.assert_close(
                packed.logits[0, start : start + n], alone.logits[0], atol=1e-5, rtol=1e-4
            )
            trained = sum(1 for x in ex.labels[1:] if x != IGNORE_INDEX)
            loss_sum += alone.loss.item() * trained
            count += trained
            start += n
        packed_loss = tiny_model(**batch, use_cache=False).loss.item()
    # Token-count-weighted mean of the unpacked losses equals the packed loss.
    assert packed_loss == pytest.approx(loss_sum / count, rel=1e-5)


def test_packing_starts_a_new_row_when_full(template):
    examples = [encode_sample(_rounds(1), template, 512) for _ in range(3)]
    n = len(examples[0].input_ids)
    rows = pack(examples, max_length=2 * n)
    assert [len(r.input_ids) for r in rows] == [2 * n, n]
