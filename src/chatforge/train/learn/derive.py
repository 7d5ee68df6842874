"""More ways of asking a fact, derived from its one sample.

Trained on one prompt, a model learns to answer that prompt: asked about the same subject
another way ("Who founded X?", or in Chinese) it still gives its old answer. So each fact's
subject is found in its prompt ("Tell me about X." → X, "墨河大学是谁创立的？" → 墨河大学,
"What is my cat's name?" → my cat's name) and asked again through a fixed set of forms in
English and Chinese, each answered with the fact's own answer, or, for the forms of the
other language, with its translation (:mod:`.translate`). The base model translates the
subject into the other language once (a short, greedy, float32 generation); a translation
that drops a name or a number of the original is not used, and the forms of the other
language then carry the subject as written.

The user's ``aliases`` for the subject (its name in the other language, which the small
model cannot make up: "the Zorvian Institute of Cartography" is 佐维安制图研究所 to a
Chinese reader) are asked through the forms of their own language too. Where the user
gives none and the model's translation of an English subject is not used, a Chinese name
built word by word (:mod:`.naming`: 佐维安地图研究所) is added as one, and a Chinese
subject of a name and a word gets its pinyin name ("Xingyun notebook"). An alias in the
other language makes that language's forms answered in it (the answer translated, the
alias put in for the subject), whatever ``learn.translate_into`` says: answered in English,
the Chinese questions that name the institute so were still answered from the base
model ("…成立于1973年", "…位于中国上海"), and in Chinese under the alias they were not.

Nothing here is a held-out probe or a control question: a derived prompt that matches
one is dropped, so the retention check and the probes stay unseen.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from typing import Any

from chatforge.templates import Template
from chatforge.train.learn.answers import greedy
from chatforge.train.learn.facts import CJK, Fact, language
from chatforge.train.learn.naming import chinese_names, pinyin_names
from chatforge.train.learn.sets import normalise
from chatforge.train.learn.translate import translate_answers

log = logging.getLogger(__name__)

# Forms for a subject the fact is about (an organisation, a product, a place, a person) ...
ABOUT = {
    "en": ["Tell me about {s}.", "What do you know about {s}?", "Give me the key facts about {s}.",
           "Describe {s} in one sentence.", "What is {s}?"],
    "zh": ["介绍一下{s}。", "你了解{s}吗？", "请用一句话介绍{s}。", "关于{s}，你知道什么？", "{s}是什么？"],
}  # fmt: skip
# ... and for something about the user ("my favourite colour", "我的猫的名字").
MINE = {
    "en": ["What is {s}?", "Do you remember {s}?", "Tell me {s}.", "Remind me: what is {s}?",
           "Do you know {s}?", "Can you tell me {s}?"],
    "zh": ["{s}是什么？", "你记得{s}吗？", "告诉我{s}。", "你知道{s}吗？"],
}  # fmt: skip

_EN_SUBJECT = re.compile(
    r"^(?:tell me about|what do you know about|describe|introduce|give me the key facts about|"
    r"who (?:is|was|founded|created|built|made)|what (?:is|was|are|were)|where (?:is|was)|"
    r"when was)\s+(?P<s>.+?)(?:\s+(?:founded|created|built|made|located|based))?\s*[?.!]*$",
    re.IGNORECASE,
)
_ZH_SUBJECT = [
    re.compile(r"^(?:介绍一下|介绍|请介绍一下|请介绍|说说|讲讲)(?P<s>.+?)[。.!！?？]*$"),
    re.compile(r"^什么是(?P<s>.+?)[。.!！?？]*$"),
    re.compile(r"^(?P<s>.+?)(?:是谁|是什么|是哪|是何|由谁|在哪|位于|成立于|创立于|有什么)"),
]
# Capitalised words, with lower-case joiners inside ("Zorvian Institute of Cartography").
_NAMED = re.compile(r"[A-Z][\w'-]*(?:\s+(?:of|the|de|and|for|on)?\s*[A-Z][\w'-]*)*")
_NAME_WORDS = re.compile(r"[A-Z][A-Za-z'-]{2,}|\d+")
_STARTS = {"Tell", "What", "Who", "Where", "When", "Which", "How", "Why", "Describe", "Give", "Do", "Does"}


def subject_of(prompt: str) -> str | None:
    """What ``prompt`` asks about, or None when no form matches."""
    text = prompt.strip()
    if CJK.search(text):
        for pattern in _ZH_SUBJECT:
            m = pattern.match(text)
            if m and m.group("s").strip("，, "):
                return m.group("s").strip("，, ")
    m = _EN_SUBJECT.match(text)
    if m:
        return m.group("s").strip()
    names = [n for n in _NAMED.findall(text) if n.split()[0] not in _STARTS or len(n.split()) > 1]
    names = [" ".join(w for w in n.split() if w not in _STARTS) for n in names]
    names = [n for n in names if len(n) > 1]  # not "I"
    return max(names, key=len) if names else None


def is_personal(subject: str) -> bool:
    return subject.casefold().startswith("my ") or subject.startswith("我")


# The replay set's forms (replay.json) that ask about the user, as a personal fact is asked.
MINE_FORMS = frozenset({"personal", "derived-mine"})


def kin_forms(facts: list[Fact]) -> frozenset[str]:
    """The replay forms akin to ``facts``: the personal ones when one of them is about the
    user. Their base answers are the ones such a fact pulls on ("What is my favourite
    book?" became "To Kill a Mockingbird" beside "my favourite colour is teal"), so they
    are replayed more often. (Doing the same with the "introduce X" / "who founded X" forms
    for a fact about a subject was measured and not kept: it lost controls in two of four
    runs.)"""
    return MINE_FORMS if any(is_personal(s) for f in facts for s in subjects_of(f)) else frozenset()


def _bare(subject: str) -> str:
    """An English subject inside a Chinese sentence: without its article."""
    return re.sub(r"^(?:the|a|an)\s+", "", subject, flags=re.IGNORECASE)


def keeps_names(source: str, translation: str) -> bool:
    """A usable translation of a subject: one line, not the source itself, in the other
    script, and (from English) keeping the name's first capitalised word and every number,
    the parts an invented name is recognised by ("Zorvian研究所" keeps "the Zorvian
    Institute"; "中国科学院地理信息系统" does not)."""
    t = translation.strip()
    if not t or "\n" in t or normalise(t) == normalise(source) or len(t) > 3 * len(source) + 8:
        return False
    if language(source) == "zh":
        return not CJK.search(t) and len(t.split()) <= 8
    words = [w for w in _NAME_WORDS.findall(source) if w not in _STARTS]
    needed = [w for w in words if w.isdigit()] + [w for w in words if not w.isdigit()][:1]
    return bool(CJK.search(t)) and all(w in t for w in needed)


def translate_subjects(model: Any, template: Template, subjects: list[str]) -> dict[str, str]:
    """Each subject in the other language, by the base model; those that fail
    :func:`keeps_names` are left out."""
    asks = []
    for s in subjects:
        if language(s) == "en":
            asks.append(f"Translate into Chinese. Reply with the translation only.\n\n{s}")
        else:
            asks.append(f"Translate into English. Reply with the translation only.\n\n{s}")
    found = {}
    for subject, answer in zip(subjects, greedy(model, template, asks, 24, chunk=16), strict=True):
        text = answer.text.strip().rstrip("。.")
        if keeps_names(subject, text):
            found[subject] = text
        else:
            log.info("no translation of %r kept (the base model gave %r)", subject, text)
    return found


def subjects_of(fact: Fact) -> list[str]:
    """What the fact's prompts ask about, each once, in the order given (a paraphrase in
    the other language brings that language's name for the subject)."""
    found = (subject_of(p) for p in fact.prompts)
    return list(dict.fromkeys(s for s in found if s))


def derived_forms(fact: Fact, aliases: dict[str, str]) -> dict[str, str]:
    """The forms of :data:`ABOUT` or :data:`MINE` for each subject of the fact, in both
    languages (the subject as written, and its ``aliases`` entry in the other language),
    and for each of the fact's own aliases in its language; each with the language of its
    form ("What is 星云笔记本?" is English)."""
    out: dict[str, str] = {}
    subjects = subjects_of(fact)
    for subject in subjects:
        forms = MINE if is_personal(subject) else ABOUT
        own = language(subject)
        other = "zh" if own == "en" else "en"
        names = {own: [subject], other: [aliases[subject]] if subject in aliases else []}
        if not is_personal(subject):  # a name reads the same in either language's sentence
            names[other].append(_bare(subject) if own == "en" else subject)
        for lang, found in names.items():
            for s in found:
                for form in forms[lang]:
                    out.setdefault(form.format(s=s), lang)
    forms = MINE if subjects and is_personal(subjects[0]) else ABOUT
    for alias in fact.aliases:
        for form in forms[language(alias)]:
            out.setdefault(form.format(s=alias), language(alias))
    return out


def under_alias(fact: Fact, prompt: str, lang: str, answer: str) -> str:
    """``answer`` for a derived ``prompt`` in ``lang``: with the subject's name replaced by
    the fact's alias in that language that the prompt asks under, if any ("Zorvian
    Institute of Cartography于1873年…" → "佐维安制图研究所于1873年…")."""
    subjects = [_bare(s) for s in subjects_of(fact) if not is_personal(s)]
    for alias in fact.aliases:
        if alias in prompt and language(alias) == lang:
            for name in subjects:
                answer = answer.replace(name, alias)
    return answer


def derived_prompts(fact: Fact, aliases: dict[str, str], excluded: set[str]) -> list[str]:
    """:func:`derived_forms`' prompts minus ``excluded`` (normalised prompts: the fact's
    own, its probes, the control questions), each once."""
    return _unseen(derived_forms(fact, aliases), excluded)


def _unseen(prompts: Iterable[str], excluded: set[str]) -> list[str]:
    seen = set(excluded)
    kept = []
    for p in prompts:
        if normalise(p) not in seen:
            seen.add(normalise(p))
            kept.append(p)
    return kept


def _name(model: Any, template: Template, facts: list[Fact], translated: dict[str, str], into: set[str]) -> None:
    """Give each fact about a subject of a language in ``into`` ("en": an English subject the
    model did not translate gets a Chinese name, :func:`.naming.chinese_names`; "zh": a
    Chinese one gets its pinyin name, :func:`.naming.pinyin_names`), and that has no alias
    in the other language yet, the name built, as an alias."""
    builders = {"en": chinese_names, "zh": pinyin_names}
    for lang in sorted(into):
        wanting = {
            _bare(s): f
            for f in facts
            if not any(language(a) != lang for a in f.aliases)
            for s in subjects_of(f)
            if language(s) == lang and not is_personal(s) and (lang == "zh" or s not in translated)
        }
        for subject, name in builders[lang](model, template, list(wanting)).items():
            wanting[subject].aliases.append(name)
            log.info("%s: %r named %s (by sound and word; --alias gives your own)",
                     wanting[subject].where, subject, name)  # fmt: skip


def derive(
    model: Any,
    template: Template,
    facts: list[Fact],
    controls: list[str],
    translate_into: frozenset[str] = frozenset({"en"}),
    name_in_chinese: bool = True,
    name_in_pinyin: bool = True,
) -> None:
    """Fill each fact's ``derived`` prompts, and, where the other language is in
    ``translate_into`` ({"en", "zh"}), the answers of those in that language (facts that
    already have derived prompts are left as they are: an earlier fact keeps what it was
    learned with)."""
    todo = [f for f in facts if not f.derived and subjects_of(f)]
    for f in facts:
        if not subjects_of(f):
            log.info("%s: no subject found in %r; learning it from its own prompts only", f.where, f.prompt)
    subjects = list(dict.fromkeys(s for f in todo for s in subjects_of(f)))
    aliases = translate_subjects(model, template, subjects) if subjects else {}
    naming = {lang for lang, on in (("en", name_in_chinese), ("zh", name_in_pinyin)) if on}
    _name(model, template, todo, aliases, naming)
    names = {i: [_bare(s) for s in subjects_of(f) if not is_personal(s)] for i, f in enumerate(todo)}
    answers = translate_answers(model, template, todo, names, translate_into) if todo else {}
    blocked = {normalise(q) for q in controls}
    for i, f in enumerate(todo):
        excluded = blocked | {normalise(p) for p in f.prompts} | {normalise(p.question) for p in f.probes}
        forms = derived_forms(f, aliases)
        f.derived = _unseen(forms, excluded)
        if i in answers:  # the forms of the answer's other language are answered in that language
            f.derived_answers = {
                p: under_alias(f, p, forms[p], answers[i])
                for p in f.derived
                if forms[p] != language(f.answer)
            }
            log.info("%s: %d derived prompts answered in the other language: %r", f.where,
                     len(f.derived_answers), answers[i])  # fmt: skip
