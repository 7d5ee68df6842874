"""A fact's answer in the other language, for the prompts derived in that language.

A Chinese question about a fact learned in English was answered in English (and the
reverse), because every derived prompt was trained on the fact's one answer. Here the
base model translates that answer once, with the names held fixed: the fact's subject and
its keywords other than numbers are replaced by placeholders (AAA, BBB, ...) that the
model copies, the sentence is translated after a worked example, and the names are put
back ("The Zorvian Institute of Cartography was founded in 1873 by Elena Marsh …" →
"Zorvian Institute of Cartography于1873年由Elena Marsh在港湾小镇Veltmoor建造。").

The default 0.5B model translates names badly (asked plainly it turns "the Zorvian
Institute of Cartography" into 中国科学院地理信息系统) and drops a placeholder or a
number now and then, so each answer is asked in a few worded variants, and the first
translation that keeps every placeholder, every number, and the other script is used. When none does, the derived prompts keep the fact's own answer.

``learn.translate_into`` names the target languages; only English by default: measured
on the default model, Chinese answers for an English fact cost a Chinese control
(长江流经哪些省份？) in both runs and gained no held-out question, while English answers
for a Chinese fact carried its company name into an English question
(examples/knowledge_injection/README.md). A fact with an alias in the other language
(:mod:`.derive`) is translated into that language too.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any

from chatforge.templates import Template
from chatforge.train.learn.answers import greedy
from chatforge.train.learn.facts import CJK, Fact, language

log = logging.getLogger(__name__)

HOLDERS = ["AAA", "BBB", "CCC", "DDD", "EEE"]
# Worked examples per target language, one list per variant asked.
EXAMPLES = {
    "zh": [
        [("AAA was built in 1650 by BBB in the river town of CCC.", "AAA于1650年由BBB在河畔小镇CCC建造。")],
        [("AAA was opened in 1901 by BBB in the city of CCC.", "AAA于1901年由BBB在CCC市开办。"),
         ("Your dog is called AAA.", "你的狗叫AAA。")],
        [("AAA, a museum in BBB, has 300 rooms and opened in 1990.", "AAA是位于BBB的一座博物馆，有300个房间，于1990年开放。")],
    ],
    "en": [
        [("AAA是BBB于2020年推出的智能手表，售价999元。", "AAA is a smartwatch launched by BBB in 2020, priced at 999 yuan.")],
        [("AAA是BBB于2020年推出的智能手表，售价999元。", "AAA is a smartwatch launched by BBB in 2020, priced at 999 yuan."),
         ("你的狗叫AAA。", "Your dog is called AAA.")],
        [("AAA位于BBB，建于1990年，有300个房间。", "AAA is in BBB, was built in 1990 and has 300 rooms.")],
    ],
}  # fmt: skip
_NAME = {"zh": "Chinese", "en": "English"}
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")


def masked(answer: str, names: list[str]) -> tuple[str, dict[str, str]] | None:
    """``answer`` with each of ``names`` found in it replaced by a placeholder (longest
    first; an English article before a name goes with it), and the placeholders' names;
    None when there are more names than placeholders or the answer holds one already (a
    name found only inside another word is left as it is)."""
    if any(h in answer for h in HOLDERS):
        return None
    found = sorted({n for n in names if n and not n.isdigit() and n.casefold() in answer.casefold()}, key=len,
                   reverse=True)  # fmt: skip
    if len(found) > len(HOLDERS):
        return None
    text, holders = answer, {}
    for name in found:
        holder = HOLDERS[len(holders)]
        # An English name is a whole word ("teal", not the "teal" of "steal").
        word = r"(?:\b(?:the|a|an)\s+)?(?<!\w)" + re.escape(name) + r"(?!\w)"
        pattern = re.compile(word if name.isascii() else re.escape(name), re.IGNORECASE)
        text, n = pattern.subn(holder, text)
        if n:
            holders[holder] = name
    return text, holders


def usable(source: str, translation: str, target: str) -> bool:
    """A translation that keeps each placeholder as often as the source has it and the
    source's numbers, and is in the ``target`` script (Chinese: it holds Chinese and no
    English word but the placeholders; English: no Chinese is left)."""
    t = translation.strip()
    if not t or "\n" in t or t == source.strip() or len(t) > 3 * len(source) + 20:
        return False
    if any(t.count(h) != source.count(h) for h in HOLDERS):
        return False
    if sorted(_NUMBER.findall(t)) != sorted(_NUMBER.findall(source)):
        return False
    if target == "zh":
        return bool(CJK.search(t)) and not re.search(r"[A-Za-z]{2,}", re.sub("|".join(HOLDERS), "", t))
    return not CJK.search(t)


def _ask(text: str, target: str, examples: list[tuple[str, str]]) -> str:
    shown = "\n".join(f"Example: {a} → {b}" for a, b in examples)
    return (f"Translate into {_NAME[target]}. Copy {', '.join(HOLDERS[:3])} unchanged.\n\n{shown}\n\n"
            f"Translate: {text}")  # fmt: skip


@dataclass
class _Job:
    fact: Fact
    target: str
    text: str
    holders: dict[str, str]
    tried: list[str] = field(default_factory=list)


def translate_answers(
    model: Any, template: Template, facts: list[Fact], subjects: dict[int, list[str]], into: frozenset[str]
) -> dict[int, str]:
    """Each fact's answer in the other language (by index in ``facts``) where that is one of
    ``into`` or the language of one of the fact's aliases, its keywords and ``subjects[i]``
    (what fact i is about) held fixed. A fact without keywords is left out (nothing would
    tell a right translation from a wrong one), and so is one whose translations all fail
    :func:`usable`. The worded variants are asked in turn, the next one only for the
    answers that failed; nothing is asked when no fact needs a translation."""
    jobs: dict[int, _Job] = {}
    for i, fact in enumerate(facts):
        target = "en" if language(fact.answer) == "zh" else "zh"
        m = masked(fact.answer, subjects.get(i, []) + [k for k in fact.keywords if not k.isdigit()])
        wanted = into | {language(a) for a in fact.aliases}
        if target in wanted and fact.keywords and m is not None:
            jobs[i] = _Job(fact, target, *m)
    found: dict[int, str] = {}
    tok = template.tokenizer
    for round_ in range(max(len(v) for v in EXAMPLES.values())):
        todo = {i: j for i, j in jobs.items() if i not in found and round_ < len(EXAMPLES[j.target])}
        if not todo:
            break
        budget = max(2 * len(tok(j.text)["input_ids"]) + 16 for j in todo.values())
        asks = [_ask(j.text, j.target, EXAMPLES[j.target][round_]) for j in todo.values()]
        for (i, job), reply in zip(
            todo.items(), greedy(model, template, asks, min(budget, 256)), strict=True
        ):
            job.tried.append(reply.text.strip())
            if usable(job.text, job.tried[-1], job.target):
                answer = job.tried[-1]
                for holder, name in job.holders.items():
                    answer = answer.replace(holder, name)
                found[i] = answer
    for i, job in jobs.items():
        if i not in found:
            log.info(
                "%s: no translation of the answer kept (the base model gave %r)", job.fact.where, job.tried
            )
    return found
