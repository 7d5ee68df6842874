"""The retention check and the recall check, from answers already generated.

A control answer is **identical** when the tuned model gives the base model's greedy text,
**kept** when it does not mention a learned fact, states no number the base answer does
not hold ("144 divided by 12 equals 11" is a changed answer, however close its characters),
and either its character ROUGE-L against the base answer is at least ``min_rouge_l`` (a
correct rewording counts) or the base model itself, reading the tuned answer, ranks every
token of it within ``max_base_gap`` logits of its own first choice (the answer parts from
the base text only at the base model's near-ties, where float32 and bf16, or a batch's
padding, already change the base model's own greedy answer) and its ROUGE-L is at least
half of ``min_rouge_l`` (a refusal in place of the base answer is not kept, however
close the base model was to refusing). A changed answer that mentions no learned fact is
also **kept** when the base model itself gives exactly that answer in bfloat16, as
``chatforge serve`` runs it by default (measured on the default model: float32 says
"144 divided by 12 equals 12.", bfloat16 "... equals 11."; the float32 reference is one
of the base model's answers, not the only one). An answer is **leaked** when it holds a
learned fact's keyword that the base answer does not. ``kept_by_rouge_l`` counts the first
way alone, ``kept_as_base_bf16`` the last way alone. A fact is **recalled** when
the answer to its training prompt holds every keyword; a probe is a **hit** when its answer
holds every keyword the probe names (or, with none named, any of the fact's). Either way
one of those keywords must be in the answer's first sentence: the fact given, not a
refusal with the keyword further on ("As an AI language model, I don't have a favourite
colour. However, … teal, teal, teal" was counted as recalled in the ten-fact chain).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from chatforge.models.onednn import onednn_linears
from chatforge.templates import Template
from chatforge.train.learn.answers import (
    Answer,
    adapters_off,
    answer_text,
    continue_greedy,
    first_differences,
    largest_gaps,
    merged,
    pad_id,
    prompt_ids,
)
from chatforge.train.learn.facts import Fact
from chatforge.train.metrics import rouge
from chatforge.train.precision import parameters_in_bf16


@dataclass
class Retention:
    rows: list[dict[str, Any]] = field(default_factory=list)
    identical: int = 0
    kept: int = 0
    leaked: int = 0
    passed: bool = False
    close: int = 0  # kept by ROUGE-L alone (identical included), the stricter count
    as_bf16: int = 0  # kept only because the base model gives that answer in bfloat16

    def summary(self) -> dict[str, Any]:
        n = len(self.rows)
        return {"controls": n, "identical": self.identical, "kept": self.kept, "leaked": self.leaked,
                "kept_by_rouge_l": self.close, "kept_as_base_bf16": self.as_bf16, "passed": self.passed}  # fmt: skip


def _holds(text: str, word: str) -> bool:
    return word.casefold() in text.casefold()


# A sentence ends at . ! ? before a space or the end (not the point of "3.5" or of a
# year: "in 1873. It" reads on), at 。！？ or at a line break.
_SENTENCE_END = re.compile(r"(?<!\d)[.!?](?=\s|$)|[。！？]|\n")


def first_sentence(text: str) -> str:
    text = text.strip()
    end = _SENTENCE_END.search(text)
    return text[: end.end()] if end else text


def gives(text: str, words: list[str], every: bool = True) -> bool:
    """Whether ``text`` gives ``words`` (case-insensitive): every one of them (or, not
    ``every``, one), and one of them in its first sentence."""
    held = [w for w in words if _holds(text, w)]
    lead = first_sentence(text)
    return bool(held) and (len(held) == len(words) or not every) and any(_holds(lead, w) for w in held)


def new_numbers(tuned: str, base: str) -> list[str]:
    """The numbers of ``tuned`` that ``base`` does not hold (digit runs; one that is part of
    a base number, like the ``13`` of a ``13,000`` cut short, is not new)."""
    held = re.findall(r"\d+", base)
    return [n for n in dict.fromkeys(re.findall(r"\d+", tuned)) if not any(n in h for h in held)]


def retention(
    questions: list[str],
    base: list[str],
    tuned: list[str],
    facts: list[Fact],
    min_rouge_l: float,
    min_kept: float,
    max_leaked: int,
    base_gaps: list[float | None] | None = None,
    max_base_gap: float = 0.0,
    complete: list[bool] | None = None,
    base_bf16: list[bool | None] | None = None,
) -> Retention:
    """Judge ``tuned`` answers against ``base`` ones (see the module docstring).
    ``base_gaps``: for each answer, the base model's largest logit gap along the tuned
    answer (:func:`~.answers.largest_gaps`; None: not rated); a changed answer whose every
    token the base model ranks within ``max_base_gap`` of its own first choice is one the
    base model could have given (it parts from the base text only where the base model
    was nearly undecided), and counts as kept with a ROUGE-L of half ``min_rouge_l``. ``complete``:
    whether each base answer ended within the token budget; numbers are compared only
    then (two answers cut at the budget end at different places: "2. **" or "[3" there is
    where the cut fell, not a changed number). ``base_bf16``: for each answer, whether the
    base model in bfloat16 gives exactly it (None: not tested); such an answer is kept
    unless it leaks."""
    keywords = [k for f in facts for k in f.keywords]
    gaps = base_gaps or [None] * len(tuned)
    out = Retention()
    served = base_bf16 or [None] * len(tuned)
    for q, b, t, gap, whole, as_bf16 in zip(
        questions, base, tuned, gaps, complete or [True] * len(tuned), served, strict=True
    ):
        leaks = [k for k in keywords if _holds(t, k) and not _holds(b, k)]
        score = 100.0 if t == b else rouge(t, b, "char")["rouge-l"]
        numbers = new_numbers(t, b) if whole else []
        sound = not leaks and not numbers
        close = sound and score >= min_rouge_l
        # ... and still half as close to the base text: not a refusal in place of an answer.
        near_tie = sound and t != b and gap is not None and gap <= max_base_gap and score >= min_rouge_l / 2
        by_bf16 = bool(as_bf16) and not leaks and not (close or near_tie)
        row = {"question": q, "base": b, "tuned": t, "identical": t == b, "rouge_l": round(score, 1),
               "base_gap": None if gap is None else round(gap, 3), "base_bf16": as_bf16, "leaked": leaks,
               "new_numbers": numbers, "kept": close or near_tie or by_bf16}  # fmt: skip
        out.identical += row["identical"]
        out.kept += row["kept"]
        out.close += close
        out.as_bf16 += by_bf16
        out.leaked += bool(leaks)
        out.rows.append(row)
    n = len(out.rows)
    out.passed = n == 0 or (out.kept >= min_kept * n - 1e-9 and out.leaked <= max_leaked)
    return out


def recall(fact: Fact, answer: str, probe_answers: list[str]) -> dict[str, Any]:
    """How ``fact`` came back: its training prompt's answer, and each probe's."""
    probes = []
    for probe, text in zip(fact.probes, probe_answers, strict=True):
        hit = gives(text, probe.keywords) if probe.keywords else gives(text, fact.keywords, every=False)
        probes.append({"question": probe.question, "answer": text, "keywords": probe.keywords, "hit": hit})
    missing = [k for k in fact.keywords if not _holds(answer, k)]
    return {
        "prompt": fact.prompt,
        "expected": fact.answer,
        "answer": answer,
        "keywords": fact.keywords,
        "aliases": fact.aliases,
        "derived": fact.derived,
        "derived_answers": fact.derived_answers,
        "recalled": gives(answer, fact.keywords) if fact.keywords else answer.strip() == fact.answer.strip(),
        "missing": missing,
        "probes": probes,
        "probe_hits": sum(p["hit"] for p in probes),
    }


@dataclass
class ControlCheck:
    """The retention check of one model state: the verdict, the tuned answers, how many of
    them had to be generated, and the answers to the questions asked ``also``."""

    kept: Retention
    answers: list[str]
    generated: int
    also: list[str] = field(default_factory=list)


def check_controls(
    model: Any,
    template: Template,
    base: list[Answer],
    facts: list[Fact],
    min_rouge_l: float,
    min_kept: float,
    max_leaked: int,
    max_new_tokens: int,
    max_base_gap: float = 0.0,
    base_bf16: bool = False,
    also: list[str] | None = None,
) -> ControlCheck:
    """Answer the control questions with ``model`` (greedy, float32) and judge them against
    the base model's ``base`` answers. Greedy decoding is the chain of arg-maxes, so one
    teacher-forced pass tells where each answer would first leave the base answer: one that
    never does is the base answer, and the others are generated on from that token only
    (the same text as generating them whole, for less). A changed answer that ROUGE-L does
    not keep is rated by the base model (its largest logit gap along the answer), and, with
    ``base_bf16``, one that is still not kept is tested, the same way as above, against the
    base model in bfloat16, one answer per pass (no padding: a served answer to one
    question); a row reports None for what it was not put through. The questions of
    ``also`` (the probes) are answered in the same batch as the changed controls: a
    decoding step costs about as much for a few more rows."""
    pairs = [(prompt_ids(template, a.question), a.ids) for a in base]
    extra = [prompt_ids(template, q) for q in also or []]
    with merged(model), onednn_linears(model):
        firsts = first_differences(model, pairs, pad_id(template))
        changed = [i for i, (first, a) in enumerate(zip(firsts, base, strict=True)) if first < len(a.ids)]
        starts = [pairs[i][0] + base[i].ids[: firsts[i]] for i in changed] + extra
        budgets = [max_new_tokens - firsts[i] for i in changed] + [max_new_tokens] * len(extra)
        # One batch: decoding is bound by reading the weights, not by the rows.
        found = continue_greedy(model, template, starts, budgets, chunk=len(starts)) if starts else []
    fresh = dict(zip(changed, found[: len(changed)], strict=True))
    tuned_ids = {i: base[i].ids[: firsts[i]] + fresh[i] for i in changed}
    tuned = [answer_text(template, tuned_ids[i]) if i in tuned_ids else a.text for i, a in enumerate(base)]
    stops = set(template.stop_token_ids)
    complete = [bool(a.ids) and a.ids[-1] in stops for a in base]

    def judged(gaps: list[float | None] | None = None, served: list[bool | None] | None = None) -> Retention:
        return retention([a.question for a in base], [a.text for a in base], tuned, facts, min_rouge_l,
                         min_kept, max_leaked, gaps, max_base_gap, complete, served)  # fmt: skip

    # The two slower tests only for the changed answers that ROUGE-L alone does not keep
    # (and the second only for those the first does not): the verdicts are the same.
    kept = judged()
    gaps: list[float | None] = [None] * len(base)
    open_ = [i for i in changed if not kept.rows[i]["kept"]]
    if open_ and max_base_gap > 0:
        # How the base model itself rates each changed answer: the adapter switched off.
        with adapters_off(model):
            found_gaps = largest_gaps(model, [(pairs[i][0], tuned_ids[i]) for i in open_], pad_id(template))
        for i, gap in zip(open_, found_gaps, strict=True):
            gaps[i] = gap
        kept = judged(gaps)
    served: list[bool | None] = [None] * len(base)
    open_ = [i for i in open_ if not kept.rows[i]["kept"]]
    if open_ and base_bf16:
        with adapters_off(model), parameters_in_bf16(model):
            for i in open_:
                pair = (pairs[i][0], tuned_ids[i])
                whole = first_differences(model, [pair], pad_id(template), prefix_once=False)[0]
                served[i] = whole == len(tuned_ids[i])
        kept = judged(gaps, served)
    return ControlCheck(kept, tuned, len(changed), [answer_text(template, r) for r in found[len(changed) :]])
