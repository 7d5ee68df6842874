"""Evaluation: generate a reply for every test conversation (greedy, through ``ChatModel``,
so prompts are rendered exactly as when serving) and score it against the reference.

The reference is the last assistant turn of each sample; everything before it is the
prompt. Predictions and per-sample scores go to a JSONL file; the means are returned.

When the reference is a tool call, the reply is also checked as a tool call:
``tool_call_parsed`` (the template parsed at least one call out of the reply),
``tool_call_valid`` (every parsed call names an offered tool and its arguments validate
against that tool's JSON Schema) and ``tool_name_match`` (the same tool names as the
reference). Like every score they are percentages, averaged over the samples they apply to.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chatforge.messages import Message, MessageError, Role, normalize_tool_schema
from chatforge.train.data import FormatOptions, Sample, load_samples
from chatforge.train.metrics import Scores

log = logging.getLogger(__name__)


@dataclass
class EvalResult:
    metrics: dict[str, float]
    predictions: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0


def split_reference(sample: Sample) -> tuple[list[Any], str]:
    """(prompt messages, reference text): the last assistant turn is the reference."""
    last = max(i for i, m in enumerate(sample.messages) if m.role is Role.ASSISTANT)
    ref = sample.messages[last]
    text = ref.content
    if ref.tool_calls:
        text = " ".join(f"{c.name}({c.arguments_json()})" for c in ref.tool_calls)
    return sample.messages[:last], text


def tool_call_checks(
    message: Message, tools: list[dict[str, Any]] | None, reference: Message
) -> dict[str, float]:
    """Parse/validate scores (0 or 100) of ``message``'s tool calls against the offered ``tools``."""
    import jsonschema

    schemas = {}
    for tool in tools or []:
        try:
            fn = normalize_tool_schema(tool)["function"]
        except MessageError:
            continue
        schemas[fn["name"]] = fn["parameters"]
    calls = message.tool_calls or []

    def valid(name: str, arguments: dict[str, Any]) -> bool:
        if name not in schemas:
            return False
        try:
            validator = jsonschema.validators.validator_for(schemas[name])(schemas[name])
            return validator.is_valid(arguments)
        except jsonschema.SchemaError:
            return False

    return {
        "tool_call_parsed": 100.0 if calls else 0.0,
        "tool_call_valid": 100.0 if calls and all(valid(c.name, c.arguments) for c in calls) else 0.0,
        "tool_name_match": 100.0
        if [c.name for c in calls] == [c.name for c in reference.tool_calls or []]
        else 0.0,
    }


def evaluate(
    chat_model: Any,
    samples: list[Sample],
    max_new_tokens: int = 256,
    tokenization: str = "jieba",
    predictions_file: Path | None = None,
    limit: int | None = None,
) -> EvalResult:
    """Greedy replies for ``samples`` and their BLEU-4 / ROUGE / exact-match / keyword scores."""
    scores = Scores()
    rows = []
    started = time.perf_counter()
    for i, sample in enumerate(samples[:limit] if limit else samples):
        prompt, reference = split_reference(sample)
        message, _ = chat_model.reply(prompt, sample.tools, max_new_tokens=max_new_tokens, do_sample=False)
        prediction = message.content
        if message.tool_calls:
            prediction = " ".join(f"{c.name}({c.arguments_json()})" for c in message.tool_calls)
        row = scores.add(prediction, reference, sample.keywords, tokenization)
        reference_turn = sample.messages[len(prompt)]
        if reference_turn.tool_calls:
            row.update(tool_call_checks(message, sample.tools, reference_turn))  # Scores keeps this row
        rows.append(
            {
                "where": sample.where,
                "prompt": prompt[-1].content if prompt else "",
                "reference": reference,
                "prediction": prediction,
                **{k: round(v, 4) for k, v in row.items()},
            }
        )
        log.info("[%d] %s", i + 1, json.dumps(rows[-1], ensure_ascii=False)[:300])
    result = EvalResult(scores.means(), rows, time.perf_counter() - started)
    if predictions_file is not None:
        predictions_file.parent.mkdir(parents=True, exist_ok=True)
        with predictions_file.open("w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return result


def evaluate_file(
    chat_model: Any,
    path: str | Path,
    options: FormatOptions | None = None,
    **kwargs: Any,
) -> EvalResult:
    samples, _ = load_samples(path, options)
    return evaluate(chat_model, samples, **kwargs)
