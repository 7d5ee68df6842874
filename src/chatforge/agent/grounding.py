"""Whether an answer's numbers come from somewhere: the question, the code that ran, or
what the tools and the interpreter returned.

Small models state results from memory (the 30th Fibonacci number is "55") or replace a
tool's result with one of their own. A number in the final answer that appears in none of
the sources of this query, not even rounded, was made up; the agent loop then asks the
model once to compute it or to use the result it got (see `Agent`). Only numbers are
checked: they are where a made-up value is both common and detectable without knowing
what the question was about.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from decimal import Decimal, InvalidOperation

__all__ = ["numbers_in", "ungrounded_numbers"]

# Digits with optional thousands separators and decimals; not part of a longer number or
# a word such as "x2" or "utf8" (identifiers are not claims).
_NUMBER = re.compile(r"(?<![\w.])-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?![\d])", re.ASCII)
# Markdown list markers ("1. ", "2) ") number the answer's own lines, not results.
_LIST_MARKER = re.compile(r"^\s*\d{1,2}[.)]\s", re.M)


def numbers_in(text: str) -> list[str]:
    """The numbers written in ``text``, as written less separators (``"1,825"`` gives ``"1825"``)."""
    text = _LIST_MARKER.sub(" ", text.replace("−", "-"))
    return [m.group(0).replace(",", "") for m in _NUMBER.finditer(text)]


def ungrounded_numbers(answer: str, sources: Iterable[str]) -> list[str]:
    """The numbers of ``answer`` that none of ``sources`` contains, exactly or rounded.

    A number is grounded when a source holds the same value, or a value that rounds to it
    at the precision it is written with (``2.27`` from ``2.2679618500000003``, ``42`` from
    ``42.16``), or its negation (``-5`` written as "minus 5" elsewhere).
    """
    known: list[Decimal] = []
    for source in sources:
        known += [d for n in numbers_in(source) if (d := _decimal(n)) is not None]
    missing = []
    for written in numbers_in(answer):
        value = _decimal(written)
        if value is None or written in missing:
            continue
        if not any(_matches(value, k) for k in known):
            missing.append(written)
    return missing


def _decimal(text: str) -> Decimal | None:
    try:
        return Decimal(text)
    except InvalidOperation:
        return None


def _matches(written: Decimal, source: Decimal) -> bool:
    """``written`` equals ``source`` up to sign, or is ``source`` rounded to its own decimals."""
    for candidate in (source, -source):
        if written == candidate:
            return True
        exponent = written.as_tuple().exponent
        if isinstance(exponent, int) and exponent <= 0:
            step = Decimal(1).scaleb(exponent)
            if abs(candidate - written) <= step / 2:
                return True
    return False
