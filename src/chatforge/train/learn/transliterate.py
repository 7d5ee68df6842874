"""An invented English name written in Chinese characters by its sound.

A Chinese reader meets "the Zorvian Institute of Cartography" as 佐维安制图研究所: the made-up
part of a foreign name is transliterated by the usual Chinese conventions (the syllable
table that dictionaries of foreign names follow: Marsh → 马什, Morgan → 摩根, Boston →
波士顿), while its common words are translated. The default 0.5B model cannot do the first
part however it is asked (it gives 中国科学院地理信息系统, or the name unchanged), so a
fact learned in English was never linked to its Chinese name.

:func:`transliterate` spells one word by sound: the spelling is read as consonant and
vowel units (``ph`` is f, a soft ``c`` is s, doubled consonants are one), cut into
syllables of an onset and a vowel (with an ``n`` closing it where no vowel follows), and
each syllable is written with the table's character. An ``r`` after a vowel and before a
consonant is silent, as in the conventions (Morgan 摩根, Gordon 戈登); a consonant with no
vowel after it gets its own character (Marsh: 马 + 什).

It is a spelling rule, not a pronouncer: it is meant for names a model has never seen,
where no established Chinese name exists to be wrong about.
"""

from __future__ import annotations

import re

# Vowel columns of the table: a, e, i, o, u, then the same closed by n.
_COLUMNS = ("a", "e", "i", "o", "u", "an", "en", "in", "on", "un")
_TABLE = {
    "":   "阿埃伊奥乌安恩因昂温",
    "b":  "巴贝比博布班本宾邦本",
    "p":  "帕佩皮波普潘彭平庞彭",
    "d":  "达德迪多杜丹登丁东敦",
    "t":  "塔特蒂托图坦滕廷顿顿",
    "g":  "加格吉戈古甘根金贡贡",
    "k":  "卡凯基科库坎肯金孔昆",
    "kw": "夸奎奎阔库宽昆昆孔昆",
    "f":  "法费菲福富凡芬芬丰丰",
    "v":  "瓦韦维沃武万文文冯文",
    "w":  "瓦韦威沃伍万温温翁温",
    "z":  "扎泽齐佐祖赞曾津宗尊",
    "s":  "萨塞西索苏桑森辛松孙",
    "th": "萨瑟西索苏桑森辛松孙",
    "sh": "沙谢希肖舒尚申欣尚顺",
    "ch": "查切奇乔丘钱琴钦琼春",
    "j":  "贾杰吉乔朱简真金琼准",
    "h":  "哈赫希霍胡汉亨欣洪洪",
    "m":  "马梅米莫穆曼门明蒙蒙",
    "n":  "纳内尼诺努南嫩宁农农",
    "l":  "拉莱利洛卢兰伦林隆伦",
    "r":  "拉雷里罗鲁兰伦林龙伦",
    "y":  "亚耶伊约尤扬延因扬云",
    "ts": "察采齐措楚灿岑钦聪春",
}  # fmt: skip
# A consonant with no vowel after it.
_ALONE = {
    "b": "布", "p": "普", "d": "德", "t": "特", "g": "格", "k": "克", "kw": "克", "f": "夫",
    "v": "夫", "w": "乌", "z": "兹", "s": "斯", "th": "斯", "sh": "什", "ch": "奇", "j": "奇",
    "h": "", "m": "姆", "n": "恩", "l": "尔", "r": "尔", "y": "伊", "ts": "茨",
}  # fmt: skip
# Spellings read as one unit, longest first: vowel groups to the table's vowels, then
# consonant groups.
_VOWEL_GROUPS = {
    "ai": "e", "ay": "e", "ei": "e", "ey": "e", "ea": "i", "ee": "i", "oa": "o", "ow": "o",
    "oo": "u", "ou": "u", "ue": "u", "ew": "u", "au": "o", "aw": "o", "ie": "i",
}  # fmt: skip
_CONSONANT_GROUPS = {"sch": "sh", "tch": "ch", "sh": "sh", "ch": "ch", "th": "th", "ph": "f",
                     "ck": "k", "qu": "kw", "wh": "w", "wr": "r", "dg": "j", "ts": "ts", "tz": "ts"}  # fmt: skip
_VOWELS = set("aeiou")
_WORD = re.compile(r"[A-Za-z]+")


def _units(word: str) -> list[tuple[str, str]]:
    """``word`` as ("c", consonant) and ("v", vowel) units in the table's spelling."""
    w = word.lower()
    out: list[tuple[str, str]] = []
    i = 0
    while i < len(w):
        for size in (3, 2):
            piece = w[i : i + size]
            glide = piece[-1] in "wy" and w[i + size : i + size + 1] in _VOWELS  # "Tidewater": e, wa
            if piece in _VOWEL_GROUPS and not glide:
                out.append(("v", _VOWEL_GROUPS[piece]))
                break
            if piece in _CONSONANT_GROUPS:
                out.append(("c", _CONSONANT_GROUPS[piece]))
                break
        else:
            size = 1
            ch = w[i]
            nxt = w[i + 1] if i + 1 < len(w) else ""
            if ch == "y":  # a vowel unless a vowel follows it
                out.append(("c", "y") if nxt in _VOWELS else ("v", "i"))
            elif ch in _VOWELS:
                out.append(("v", ch))
            elif ch == "c":
                out.append(("c", "s" if nxt in ("e", "i", "y") else "k"))
            elif ch == "x":
                out += [("c", "k"), ("c", "s")]
            elif ch == "q":
                out.append(("c", "k"))
            elif out and out[-1] == ("c", ch):  # a doubled consonant is one
                pass
            else:
                out.append(("c", ch))
        i += size
    # A silent final e after a consonant ("Blaine", "Stone"), in words of more than one vowel.
    if len(out) > 2 and out[-1] == ("v", "e") and out[-2][0] == "c" and sum(k == "v" for k, _ in out) > 1:
        out.pop()
    return out


def transliterate(word: str) -> str:
    """``word`` (Latin letters; anything else is kept as it is) in Chinese characters by
    its sound: "Zorvian" → 佐维安, "Marsh" → 马什, "Veltmoor" → 韦尔特穆尔."""
    return _WORD.sub(lambda m: _spell(m.group()), word)


def _spell(word: str) -> str:
    units = _units(word)
    out = []
    i = 0
    while i < len(units):
        kind, sound = units[i]
        nxt = units[i + 1] if i + 1 < len(units) else None
        if kind == "c" and nxt and nxt[0] == "v":
            onset, vowel, i = sound, nxt[1], i + 2
        elif kind == "v":
            onset, vowel, i = "", sound, i + 1
        else:  # a consonant with no vowel after it
            after = units[i - 1] if i > 0 else ("c", "")
            silent = sound == "r" and after[0] == "v" and (nxt is not None or after[1] == "e")
            if not silent:  # an r after a vowel: Morgan 摩根, Carter 卡特 (but Moor 穆尔)
                out.append(_ALONE.get(sound, ""))
            i += 1
            continue
        # An n (or m) closing the syllable: no vowel after it.
        if i < len(units) and units[i] in (("c", "n"), ("c", "m")) and (i + 1 == len(units) or units[i + 1][0] == "c"):
            vowel += "n"
            i += 1
        if not onset and vowel == "a" and out and units[i - 2 if i > 1 else 0] == ("v", "i"):
            onset = "y"  # -ia: Victoria 维多利亚 (but -ian: Julian 朱利安)
        row = _TABLE.get(onset)
        if row is None:  # an onset the table lacks: the consonant alone, then the vowel
            out.append(_ALONE.get(onset, ""))
            row = _TABLE[""]
        out.append(row[_COLUMNS.index(vowel)])
    return "".join(out)
