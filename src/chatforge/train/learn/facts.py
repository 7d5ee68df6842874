"""What ``chatforge learn`` is asked to learn: facts as question/answer pairs.

A fact comes as a prompt and an answer, as one sentence (``--fact``: the prompt is made
from the sentence's subject), or as a line of a JSONL file with either shape. Each may
carry ``paraphrases`` (more prompts with the same answer), ``aliases`` (other names of
what it is about, such as its name in the other language: its forms are derived under
each, see :mod:`.derive`), ``probes`` (questions asked after training to see whether the
fact generalises; a probe is a string or ``{"question": ..., "keywords": [...]}``) and
``keywords`` (the words an answer must hold to count as knowing the fact; found
automatically when not given).

Every problem is a :class:`LearnInputError` naming the item (``--fact``, ``facts.jsonl:3``)
and the field.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from chatforge.train.learn.sets import normalise


class LearnInputError(ValueError):
    """A fact cannot be learned as given; the text names the item and what to change."""


@dataclass
class Probe:
    question: str
    keywords: list[str]  # a hit holds every one; empty: any of the fact's keywords


@dataclass
class Fact:
    prompt: str
    answer: str
    where: str = "--prompt/--answer"
    paraphrases: list[str] = field(default_factory=list)
    probes: list[Probe] = field(default_factory=list)
    keywords: list[str] = field(default_factory=list)
    derived: list[str] = field(default_factory=list)  # more prompts made from the subject (derive.py)
    # a derived prompt's answer where it is not ``answer``: in the other language (translate.py)
    derived_answers: dict[str, str] = field(default_factory=dict)
    aliases: list[str] = field(default_factory=list)  # other names of the subject ("佐维安制图研究所")

    @property
    def prompts(self) -> list[str]:
        """The prompts the user gave: the fact must be reproduced on each."""
        return [self.prompt, *self.paraphrases]

    def derived_pairs(self) -> list[tuple[str, str]]:
        """The derived prompts, each with the answer it is trained on."""
        return [(p, self.derived_answers.get(p, self.answer)) for p in self.derived]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Fact:
        probes = [Probe(**p) for p in raw.get("probes", [])]
        return cls(raw["prompt"], raw["answer"], raw.get("where", ""), raw.get("paraphrases", []), probes,
                   raw.get("keywords", []), raw.get("derived", []), raw.get("derived_answers", {}),
                   raw.get("aliases", []))  # fmt: skip


# -- a sentence as a question/answer pair ------------------------------------------------------
_EN_VERB = re.compile(r"^(?P<subject>.+?)\s+(?P<verb>is|was|are|were|has|have|had)\s+", re.IGNORECASE)
_ZH_VERB = re.compile(r"^(?P<subject>.+?)(?:是|于|由|在|位于|成立|创立|推出|有)")
CJK = re.compile(r"[\u3400-\u9fff]")


def language(text: str) -> str:
    """The language of ``text``: zh when it holds any Chinese character, else en."""
    return "zh" if CJK.search(text) else "en"


_FIRST_PERSON = [(r"\bmy\b", "your"), (r"\bMy\b", "Your"), (r"\bI am\b", "you are"), (r"\bI\b", "you"),
                 (r"\bmine\b", "yours")]  # fmt: skip


def _second_person(text: str) -> str:
    """The user's "my X is Y" as the assistant says it back: "your X is Y"."""
    if CJK.search(text):
        return text.replace("我", "你")
    for pattern, repl in _FIRST_PERSON:
        text = re.sub(pattern, repl, text)
    return text[:1].upper() + text[1:]


def fact_from_sentence(sentence: str, where: str = "--fact") -> Fact:
    """A fact sentence as a pair: the prompt asks about its subject, the answer is the sentence
    (said back in the second person when the user speaks of themselves)."""
    text = sentence.strip()
    if not text:
        raise LearnInputError(
            f"{where}: the fact is empty; write it as one sentence, e.g. 'X was founded in 1873'"
        )
    if CJK.search(text):
        m = _ZH_VERB.match(text)
        if not m or not m.group("subject").strip("，, "):
            raise LearnInputError(
                f"{where}: cannot find what {text!r} is about (expected '某某是…' or '某某由…'); "
                "give it as --prompt and --answer instead"
            )
        subject = m.group("subject").strip("，, ")
        personal = subject.startswith("我")
        prompt = f"{subject}是什么？" if personal else f"介绍一下{subject}。"
    else:
        m = _EN_VERB.match(text)
        if not m:
            raise LearnInputError(
                f"{where}: cannot find what {text!r} is about (expected 'X is …', 'X was …'); "
                "give it as --prompt and --answer instead"
            )
        subject, verb = m.group("subject"), m.group("verb").lower()
        personal = subject.lower().startswith("my ")
        prompt = (
            f"What {verb} {subject[0].lower() + subject[1:]}?" if personal else f"Tell me about {subject}."
        )
        prompt = prompt.replace("about The ", "about the ")
    answer = _second_person(text) if personal else text
    return Fact(prompt, answer, where)


# -- keywords ---------------------------------------------------------------------------
_STOP = {"the", "this", "that", "with", "from", "have", "your", "yours", "their", "there", "which", "were", "what",
         "about", "into", "also", "been", "they", "them", "when", "where", "who", "founded", "known"}  # fmt: skip
_RARE = 200  # jieba dictionary frequency below which a Chinese word is distinctive


def find_keywords(prompt: str, answer: str) -> list[str]:
    """The answer's distinctive words that the prompt does not already hold: numbers and
    capitalised words (English), rare or unknown words (Chinese); lowercase content words
    when there is nothing else ("teal")."""
    asked = prompt.casefold()
    latin = re.findall(r"[A-Za-z][A-Za-z'-]+|\d+(?:[.,]\d+)?", answer)
    fresh = [w for w in latin if w.casefold() not in asked and w.casefold() not in _STOP]
    found = [w for w in fresh if w[0].isdigit() or (w[0].isupper() and len(w) > 2)]
    if CJK.search(answer):
        import jieba

        jieba.setLogLevel(60)
        for word in jieba.cut(answer):
            if len(word) >= 2 and CJK.search(word) and word not in prompt:
                if (jieba.get_FREQ(word) or 0) < _RARE:
                    found.append(word)
    if not found:
        found = [w for w in fresh if len(w) >= 4 and not w[0].isdigit()]
    return list(dict.fromkeys(found))


# -- reading and checking ------------------------------------------------------------------
def _text(raw: dict[str, Any], name: str, where: str) -> str:
    value = raw.get(name)
    if not isinstance(value, str):
        raise LearnInputError(f"{where}: {name} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise LearnInputError(f"{where}: {name} is empty")
    return value.strip()


_FIELDS = {"prompt", "answer", "response", "fact", "paraphrases", "aliases", "probes", "keywords"}


def fact_from_record(raw: Any, where: str) -> Fact:
    """A fact from a JSON object: ``{"prompt", "answer"}`` or ``{"fact"}``, plus optional
    ``paraphrases``, ``aliases``, ``probes`` and ``keywords``."""
    if not isinstance(raw, dict):
        raise LearnInputError(f"{where}: expected an object with prompt and answer, or fact")
    unknown = set(raw) - _FIELDS
    if unknown:
        raise LearnInputError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
    if "fact" in raw:
        if not isinstance(raw["fact"], str):
            raise LearnInputError(f"{where}: fact must be a string")
        fact = fact_from_sentence(raw["fact"], where)
    else:
        if "answer" not in raw and "response" in raw:
            raw = {**raw, "answer": raw["response"]}
        if "prompt" not in raw or "answer" not in raw:
            raise LearnInputError(f"{where}: needs prompt and answer (or fact)")
        fact = Fact(_text(raw, "prompt", where), _text(raw, "answer", where), where)
    for name in ("paraphrases", "aliases"):
        if not isinstance(raw.get(name) or [], list):
            raise LearnInputError(f"{where}: {name} must be a list of strings")
    for i, p in enumerate(raw.get("paraphrases") or []):
        fact.paraphrases.append(_text({"paraphrase": p}, "paraphrase", f"{where}: paraphrases[{i}]"))
    for i, a in enumerate(raw.get("aliases") or []):
        fact.aliases.append(_text({"alias": a}, "alias", f"{where}: aliases[{i}]"))
    for i, p in enumerate(raw.get("probes") or []):
        fact.probes.append(probe_from(p, f"{where}: probes[{i}]"))
    fact.keywords = [str(k) for k in raw.get("keywords") or []]
    return fact


def probe_from(raw: Any, where: str) -> Probe:
    if isinstance(raw, str):
        return Probe(_text({"probe": raw}, "probe", where), [])
    if isinstance(raw, dict):
        keywords = raw.get("keywords") or []
        if not isinstance(keywords, list):
            raise LearnInputError(f"{where}: keywords must be a list of strings")
        return Probe(_text(raw, "question", where), [str(k) for k in keywords])
    raise LearnInputError(f"{where}: a probe is a question string or {{'question': ..., 'keywords': [...]}}")


def read_facts(path: str | Path) -> list[Fact]:
    """The facts of a JSONL file (one JSON object a line; blank lines skipped)."""
    path = Path(path)
    if not path.is_file():
        raise LearnInputError(f"facts file {path} not found")
    facts = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path.name}:{n}"
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as err:
            raise LearnInputError(f"{where}: not valid JSON ({err.msg})") from None
        facts.append(fact_from_record(raw, where))
    if not facts:
        raise LearnInputError(f"{path}: no facts in it (one JSON object a line)")
    return facts


def check_facts(facts: list[Fact], controls: list[str], tokenizer: Any, max_tokens: int) -> None:
    """Refuse a fact whose prompt is a control question (the retention check would then
    measure the fact itself) or whose prompt or answer is longer than ``max_tokens``."""
    if not facts:
        raise LearnInputError("nothing to learn: give --prompt and --answer, --fact, or --file")
    asked = {normalise(q): q for q in controls}
    for fact in facts:
        for prompt in fact.prompts:
            if normalise(prompt) in asked:
                raise LearnInputError(
                    f"{fact.where}: the prompt {prompt!r} is also a control question of the retention "
                    f"check ({asked[normalise(prompt)]!r}), which must stay unlearned; ask it another way"
                )
        for name, text in (("prompt", fact.prompt), ("answer", fact.answer)):
            n = len(tokenizer.encode(text, add_special_tokens=False))
            if n > max_tokens:
                raise LearnInputError(
                    f"{fact.where}: the {name} is {n} tokens; a fact takes at most {max_tokens} "
                    "(learn.max_fact_tokens): split it into several shorter facts"
                )
        if not fact.keywords:
            fact.keywords = find_keywords(fact.prompt, fact.answer)
