"""The retention check and the recall check, from answers already generated.

A control answer is **identical** when the tuned model gives the base model's greedy text,
**kept** when it does not mention a learned fact and its character ROUGE-L against the
base answer is at least ``min_rouge_l`` (a correct rewording counts), and **leaked** when it
holds a learned fact's keyword that the base answer does not. A fact is **recalled** when
the answer to its training prompt holds every keyword; a probe is a **hit** when its answer
holds every keyword the probe names (or, with none named, any of the fact's).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from chatforge.train.learn.facts import Fact
from chatforge.train.metrics import rouge


@dataclass
class Retention:
    rows: list[dict[str, Any]] = field(default_factory=list)
    identical: int = 0
    kept: int = 0
    leaked: int = 0
    passed: bool = False

    def summary(self) -> dict[str, Any]:
        n = len(self.rows)
        return {"controls": n, "identical": self.identical, "kept": self.kept, "leaked": self.leaked,
                "passed": self.passed}  # fmt: skip


def _holds(text: str, word: str) -> bool:
    return word.casefold() in text.casefold()


def retention(
    questions: list[str],
    base: list[str],
    tuned: list[str],
    facts: list[Fact],
    min_rouge_l: float,
    min_kept: float,
    max_leaked: int,
) -> Retention:
    keywords = [k for f in facts for k in f.keywords]
    out = Retention()
    for q, b, t in zip(questions, base, tuned, strict=True):
        leaks = [k for k in keywords if _holds(t, k) and not _holds(b, k)]
        score = 100.0 if t == b else rouge(t, b, "char")["rouge-l"]
        row = {"question": q, "base": b, "tuned": t, "identical": t == b, "rouge_l": round(score, 1),
               "leaked": leaks, "kept": not leaks and score >= min_rouge_l}  # fmt: skip
        out.identical += row["identical"]
        out.kept += row["kept"]
        out.leaked += bool(leaks)
        out.rows.append(row)
    n = len(out.rows)
    out.passed = n == 0 or (out.kept >= min_kept * n - 1e-9 and out.leaked <= max_leaked)
    return out


def recall(fact: Fact, answer: str, probe_answers: list[str]) -> dict[str, Any]:
    """How ``fact`` came back: its training prompt's answer, and each probe's."""
    probes = []
    for probe, text in zip(fact.probes, probe_answers, strict=True):
        if probe.keywords:
            hit = all(_holds(text, k) for k in probe.keywords)
        else:
            hit = any(_holds(text, k) for k in fact.keywords)
        probes.append({"question": probe.question, "answer": text, "keywords": probe.keywords, "hit": hit})
    missing = [k for k in fact.keywords if not _holds(answer, k)]
    return {
        "prompt": fact.prompt,
        "expected": fact.answer,
        "answer": answer,
        "keywords": fact.keywords,
        "recalled": not missing if fact.keywords else answer.strip() == fact.answer.strip(),
        "missing": missing,
        "probes": probes,
        "probe_hits": sum(p["hit"] for p in probes),
    }
