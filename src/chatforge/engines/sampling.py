"""Picking the next token from logits: penalties, temperature, top-k, top-p, and a guard
against NaN/inf logits (a broken model or a bad dtype must not crash a conversation
or silently produce garbage)."""

from __future__ import annotations

import torch

from chatforge.engines.base import EngineError, SamplingParams


def sanitize(logits: torch.Tensor) -> torch.Tensor:
    """Logits with NaN and +inf removed; raises when nothing usable is left."""
    if torch.isfinite(logits).all():
        return logits
    logits = torch.nan_to_num(logits.float(), nan=float("-inf"), posinf=torch.finfo(torch.float32).max)
    if not torch.isfinite(logits).any(dim=-1).all():
        raise EngineError("the model produced only NaN/inf logits (try dtype='float32')")
    return logits


def apply_penalties(
    logits: torch.Tensor, seen: torch.Tensor, counts: torch.Tensor | None, params: SamplingParams
) -> torch.Tensor:
    """Repetition penalty (Hugging Face semantics) over ``seen`` token ids; presence and
    frequency penalties (OpenAI semantics) over ``counts`` of generated tokens."""
    if params.repetition_penalty != 1.0 and seen.numel():
        picked = logits.gather(-1, seen)
        picked = torch.where(
            picked > 0, picked / params.repetition_penalty, picked * params.repetition_penalty
        )
        logits = logits.scatter(-1, seen, picked)
    if counts is not None and (params.presence_penalty or params.frequency_penalty):
        logits = (
            logits
            - params.frequency_penalty * counts
            - params.presence_penalty * (counts > 0).to(logits.dtype)
        )
    return logits


def sample(
    logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Next token ids, shape (batch,), from logits of shape (batch, vocab)."""
    logits = sanitize(logits.float())
    if params.greedy:
        return logits.argmax(dim=-1)
    # Extreme penalties or a small temperature can push logits past float32's range.
    logits = sanitize(logits / max(params.temperature, 1e-5))
    if params.top_k > 0:
        k = min(params.top_k, logits.shape[-1])
        kth = torch.topk(logits, k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = sorted_logits.softmax(dim=-1)
        cumulative = probs.cumsum(dim=-1)
        # Drop a token when the ones before it already reach top_p; the first always stays.
        drop = (cumulative - probs) >= params.top_p
        drop[..., 0] = False  # even when top_p rounds to 0 in float32
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
