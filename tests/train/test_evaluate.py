"""Evaluation: greedy replies through ChatModel, scored and written as JSONL."""

from __future__ import annotations

import json

from chatforge.train.data import load_samples
from chatforge.train.evaluate import evaluate, split_reference


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
