"""A grammar applied to sampling, token by token (llguidance's matcher).

The sampler first picks a token as it would unconstrained; only when the grammar forbids
that token does it compute the grammar's token mask and pick again among the allowed
tokens (llama.cpp's own samplers check grammars the same way). A reply the model writes
in the allowed form anyway costs one check per token; a forbidden choice costs a mask
(about 1.5 ms over Qwen2.5's 152k tokens). Sampling stays exact: a token drawn from the
full distribution and kept when allowed, else drawn from the masked one, has the masked
distribution's probabilities.

llguidance needs a fast (Rust-backed) Hugging Face tokenizer; building its view of one
takes about a second, so it is cached per tokenizer and end-of-reply token set.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from typing import Any

import numpy as np

from chatforge.constrain.grammars import GrammarError

_lock = threading.Lock()
_views: weakref.WeakKeyDictionary[Any, dict[tuple[int, ...], Any]] = weakref.WeakKeyDictionary()
# Compiled grammars, copied for each reply: compiling one with a few tool schemas takes tens
# of milliseconds, a copy microseconds, and an agent or a client sends the same tools again
# and again.
_compiled: OrderedDict[tuple[int, str], Any] = OrderedDict()
COMPILED_KEPT = 64

NAME_START = b'"name": "'
"""Where a call's function name begins, as the grammars write calls."""
MIN_NAME_MASS = 0.5
"""A call whose name the model gave less than this probability, among the names offered,
was meant for a tool that is not offered (see ``Constraint.unknown_tool``)."""


def grammar_tokenizer(tokenizer: Any, end_ids: list[int]) -> Any:
    """llguidance's view of ``tokenizer``, with ``end_ids`` as the tokens that end a reply."""
    import llguidance.hf

    key = tuple(sorted(set(end_ids)))
    with _lock:
        views = _views.setdefault(tokenizer, {})
        if key not in views:
            try:
                views[key] = llguidance.hf.from_tokenizer(tokenizer, eos_token=list(key) or None)
            except Exception as err:  # noqa: BLE001 - a slow tokenizer and the like
                raise GrammarError(f"constrained decoding needs a fast tokenizer: {err}") from err
        return views[key]


def supports(tokenizer: Any) -> bool:
    """Whether llguidance can read ``tokenizer`` (a Rust-backed fast tokenizer)."""
    return hasattr(tokenizer, "backend_tokenizer")


class Constraint:
    """One reply's grammar state: which tokens may come next, and the tokens taken so far."""

    def __init__(self, view: Any, grammar: str, end_ids: list[int]) -> None:
        import llguidance

        self._end_ids = frozenset(end_ids)
        key = (id(view), grammar)
        with _lock:
            owner, compiled = _compiled.get(key, (None, None))
            if owner is view:  # (the key's id could be a freed view's)
                _compiled.move_to_end(key)
            else:
                compiled = None
        if compiled is None:
            compiled = llguidance.LLMatcher(view, grammar, log_level=0)
            if compiled.is_error():
                raise GrammarError(compiled.get_error())
            with _lock:
                _compiled[key] = (view, compiled)
                while len(_compiled) > COMPILED_KEPT:
                    _compiled.popitem(last=False)
        self._matcher = compiled.deep_copy()
        self._mask = np.zeros((view.vocab_size + 31) // 32, dtype=np.int32)
        self._view = view
        self._tail = b""  # the last bytes taken, to know where a function name begins
        # The model began a function name that no offered tool has: the grammar turned it
        # into an offered one. A small model asked something no tool fits often "calls" a
        # tool it makes up; the caller may rather have text (ChatModel.generate).
        self.unknown_tool = False

    def allows(self, token: int) -> bool:
        if token in self._end_ids:  # the reply may end once the grammar is complete
            return self._matcher.is_accepting()
        return self._matcher.validate_tokens([token]) == 1

    def restrict(self, logits: np.ndarray) -> np.ndarray:
        """A copy of ``logits`` with every token the grammar forbids at -inf."""
        self._matcher.unsafe_compute_mask_ptr(self._mask.ctypes.data, self._mask.nbytes)
        if self._matcher.is_error():
            raise GrammarError(f"the grammar failed: {self._matcher.get_error()}")
        allowed = np.unpackbits(self._mask.view(np.uint8), bitorder="little").astype(bool)
        n = min(len(allowed), len(logits))
        out = np.full(len(logits), -np.inf, dtype=np.float32)
        out[:n][allowed[:n]] = logits[:n][allowed[:n]]
        if not np.isfinite(out).any():
            raise GrammarError("the grammar allows no token here")
        if self._tail.endswith(NAME_START):
            row = np.asarray(logits[:n], dtype=np.float64)
            weights = np.exp(row - row.max())
            if weights[allowed[:n]].sum() < MIN_NAME_MASS * weights.sum():
                self.unknown_tool = True
        return out

    def forced(self, limit: int) -> list[int]:
        """Up to ``limit`` tokens the grammar allows no alternative to from here (a draft
        for speculative decoding: the model still picks each one itself)."""
        if limit <= 0 or self._matcher.is_stopped():
            return []
        return list(self._matcher.compute_ff_tokens())[:limit]

    def consume(self, token: int) -> None:
        if not self._matcher.consume_token(token):
            raise GrammarError(f"token {token} does not follow the grammar: {self._matcher.get_error()}")
        self._tail = (self._tail + self._view.decode_bytes([token]))[-len(NAME_START) :]
