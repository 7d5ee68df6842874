"""A subject's name in the other language, built where the base model cannot give it.

A Chinese reader asks about "the Zorvian Institute of Cartography" as 佐维安制图研究所: the
invented word written by its sound, the common words translated, the "of" part put
first. The default 0.5B model translates the whole name into something else
(中国科学院地理信息系统), which :func:`.derive.keeps_names` rejects, and then the fact's
Chinese forms asked under the English name never reach a Chinese question that names the
subject in Chinese. Here the name is built word by word instead:

- an invented word (capitalised, split by the tokenizer into pieces, and left in Latin
  letters when the model is asked for its Chinese) is transliterated
  (:mod:`.transliterate`);
- a head noun of an organisation or place (Institute, University, Labs, ...) comes from
  :data:`HEADS`: the model gets these wrong alone (Institute → 学校, Society → 社会);
- any other word is the model's one-word translation, which must be a few Chinese
  characters; a word without one leaves the subject unnamed;
- "A B of C" is put in Chinese order: A's names, then C, then A's other words
  ("the mayor of Quillhaven" → 奎尔哈文市长).

A subject with no invented word gets no name here: its words are all the model's to
translate. The name is used as the fact's alias in Chinese (:mod:`.derive`), as one the
user gives with ``--alias`` is; measured on the organisation fact, a name built this way
(佐维安地图研究所) links the Chinese probes as the exact one does
(examples/knowledge_injection/README.md).

The other way, a Chinese subject of a name and a common word (星云笔记本) is met in English
under the name's pinyin ("the Xingyun notebook"), while the model translates it by meaning
("Star Cloud Notebook"): :func:`pinyin_names` builds that one.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from chatforge.templates import Template
from chatforge.train.learn.answers import greedy
from chatforge.train.learn.facts import CJK
from chatforge.train.learn.transliterate import transliterate

log = logging.getLogger(__name__)

# Head nouns of organisations and places, in their usual Chinese form.
HEADS = {
    "institute": "研究所", "institution": "机构", "university": "大学", "college": "学院",
    "academy": "学院", "school": "学校", "museum": "博物馆", "library": "图书馆",
    "gallery": "美术馆", "hospital": "医院", "company": "公司", "corporation": "公司",
    "group": "集团", "labs": "实验室", "lab": "实验室", "laboratory": "实验室",
    "foundation": "基金会", "society": "学会", "association": "协会", "council": "委员会",
    "bank": "银行", "airlines": "航空", "observatory": "天文台", "centre": "中心",
    "center": "中心", "studio": "工作室", "press": "出版社", "club": "俱乐部",
    "theatre": "剧院", "theater": "剧院", "park": "公园", "river": "河", "lake": "湖",
    "island": "岛", "city": "市", "town": "镇", "village": "村", "mayor": "市长",
}  # fmt: skip
# ... and back, the first English word of each, as part of a name (墨河大学: Mohe University).
_HEADS_IN_ENGLISH = {zh: en.capitalize() for en, zh in reversed(HEADS.items()) if en != "mayor"}
_SKIP = {"the", "a", "an"}
_WORD = re.compile(r"[A-Za-z0-9][\w'-]*")
_MAX_CHARS = 6  # a word's translation longer than this is a sentence, not a word


def _is_invented(tokenizer: Any, word: str) -> bool:
    """Capitalised and cut into several pieces by the tokenizer (a known word is one)."""
    letters = re.sub(r"[^A-Za-z]", "", word)
    return word[:1].isupper() and len(letters) > 2 and len(tokenizer(" " + letters)["input_ids"]) > 1


def _word_of(reply: str) -> str | None:
    text = reply.strip().strip("“”\"'。.")
    if text and len(text) <= _MAX_CHARS and all(CJK.match(c) for c in text):
        return text
    return None


def chinese_names(model: Any, template: Template, subjects: list[str]) -> dict[str, str]:
    """A Chinese name for each English subject (without its article) that holds an
    invented word and whose other words all have a Chinese one; the others are left out."""
    tok = template.tokenizer
    words = {w for s in subjects for w in _WORD.findall(s) if w.casefold() not in _SKIP | {"of"}}
    invented = sorted(w for w in words if w.casefold() not in HEADS and _is_invented(tok, w))
    # An invented-looking word the model does translate ("Cartography" → 地图) is a word.
    asks = [f"英文单词“{re.sub(r'[^A-Za-z]', '', w)}”的中文是什么？只回答中文词。" for w in invented]
    replies = greedy(model, template, asks, 8, chunk=16) if asks else []
    said = {w: _word_of(r.text) for w, r in zip(invented, replies, strict=True)}
    names = {w for w, r in zip(invented, replies, strict=True) if not CJK.search(r.text)}
    common = sorted(w for w in words - names if w.casefold() not in HEADS and not w.isdigit() and not said.get(w))
    asks = [f'Translate the English word "{w}" into Chinese. Reply with the Chinese word only.' for w in common]
    replies = greedy(model, template, asks, 8, chunk=16) if asks else []
    said |= {w: _word_of(r.text) for w, r in zip(common, replies, strict=True)}

    def chinese(word: str) -> str | None:
        if word in names:
            return transliterate(word)
        return HEADS.get(word.casefold()) or (word if word.isdigit() else said.get(word))

    found = {}
    for subject in subjects:
        head, _, of = subject.partition(" of ")
        parts = [[w for w in _WORD.findall(p) if w.casefold() not in _SKIP] for p in (head, of)]
        if not any(w in names for p in parts for w in p):
            continue
        in_chinese = [[chinese(w) for w in p] for p in parts]
        if any(c is None for p in in_chinese for c in p):
            log.info("%r: no Chinese name built (a word without a translation: %r)", subject, in_chinese)
            continue
        first = [c for w, c in zip(parts[0], in_chinese[0], strict=True) if w in names]
        rest = [c for w, c in zip(parts[0], in_chinese[0], strict=True) if w not in names]
        found[subject] = "".join(first + in_chinese[1] + rest) if of else "".join(in_chinese[0])
    return found


def pinyin_names(model: Any, template: Template, subjects: list[str]) -> dict[str, str]:
    """An English name for each Chinese subject of a name and a common word, as an English
    reader meets it: the name in pinyin, the word translated (星云笔记本 → "Xingyun
    notebook", 墨河大学 → "Mohe University"). The model translates such a subject by
    meaning ("Star Cloud Notebook"), which an English question that uses the pinyin does not
    reach. Subjects that :mod:`jieba` does not cut into a name and a last word, and those
    whose last word has no one-word translation, are left out."""
    import jieba
    from pypinyin import lazy_pinyin

    cut = {s: jieba.lcut(s) for s in subjects}
    cut = {s: w for s, w in cut.items() if len(w) >= 2 and all(CJK.match(c) for c in s)}
    lasts = sorted({w[-1] for w in cut.values()})
    asks = [f'把中文词“{w}”翻译成英文。只回答英文词。' for w in lasts]
    replies = greedy(model, template, asks, 8, chunk=16) if asks else []
    english = {}
    for word, reply in zip(lasts, replies, strict=True):
        text = reply.text.strip().strip("“”\"'。.")
        if re.fullmatch(r"[A-Za-z]+(?: [A-Za-z]+)?", text):
            english[word] = _HEADS_IN_ENGLISH.get(word, text.lower())  # Mohe University, Xingyun notebook
    found = {}
    for subject, words in cut.items():
        if words[-1] in english:
            found[subject] = f"{''.join(lazy_pinyin(''.join(words[:-1]))).capitalize()} {english[words[-1]]}"
    return found
