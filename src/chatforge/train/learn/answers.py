"""Greedy answers, and the cheap test of whether a model would give a known answer.

:func:`greedy` generates in one batch per chunk (the shared system prompt read once, each
row leaving the batch when it ends) and returns token ids beside the text, so that a base
model's answer can later be tested token for token.
:func:`reproduces` does that test without generating: one forward pass over prompt +
answer, and the answer is what greedy decoding gives exactly when every answer token is
the arg-max after its prefix (teacher forcing). That makes the stopping criterion a
forward pass per check instead of a generation.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from transformers import DynamicCache

from chatforge.engines.base import common_prefix
from chatforge.messages import Message, Role
from chatforge.models.kvcache import stack_left_padded
from chatforge.templates import Template


@dataclass
class Answer:
    question: str
    text: str
    ids: list[int]  # the generated tokens, the stop token included when one was reached


def prompt_ids(template: Template, question: str) -> list[int]:
    return template.render([Message(Role.USER, question)], add_generation_prompt=True).ids


def pad_id(template: Template) -> int:
    tok = template.tokenizer
    return int(tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)


def greedy(
    model: Any, template: Template, questions: list[str], max_new_tokens: int, chunk: int = 8
) -> list[Answer]:
    """Greedy answers to ``questions`` (left-padded batches of ``chunk``), parsed by the template."""
    prompts = [prompt_ids(template, q) for q in questions]
    rows = continue_greedy(model, template, prompts, [max_new_tokens] * len(prompts), chunk)
    return [Answer(q, answer_text(template, row), row) for q, row in zip(questions, rows, strict=True)]


def answer_text(template: Template, ids: list[int]) -> str:
    """The reply text of generated ``ids`` (a final stop token dropped), parsed by the template."""
    stops = set(template.stop_token_ids)
    text_ids = ids[:-1] if ids and ids[-1] in stops else ids
    text = template.tokenizer.decode(text_ids, skip_special_tokens=True)
    return template.parse(text).content.strip()


@torch.no_grad()
def continue_greedy(
    model: Any, template: Template, prompts: list[list[int]], budgets: list[int], chunk: int = 8
) -> list[list[int]]:
    """Greedy continuations of token ``prompts``, each at most its budget of new tokens and
    ended by the first stop token (kept). Batched, left-padded, in chunks of ``chunk``."""
    stops = set(template.stop_token_ids)
    out: list[list[int]] = []
    for start in range(0, len(prompts), chunk):
        out += _decode(model, prompts[start : start + chunk], budgets[start : start + chunk], stops)
    return out


def _decode(model: Any, prompts: list[list[int]], budgets: list[int], stops: set[int]) -> list[list[int]]:
    """One batch decoded greedily (see :func:`_read`); a row leaves the batch (and the KV
    cache) as soon as it has its stop token or its budget: the answers of a retention check
    end after 3 to 64 tokens, and a batch that ran until its longest row was done spent
    most of its steps on finished rows."""
    out: list[list[int]] = [[] for _ in prompts]
    rows = [i for i, b in enumerate(budgets) if b > 0]
    if not rows:
        return out
    cache, mask, chosen = _read(model, [prompts[i] for i in rows])
    positions = mask.sum(dim=1, keepdim=True) - 1
    while True:
        going = []
        for n, (i, token) in enumerate(zip(rows, chosen.tolist(), strict=True)):
            out[i].append(token)
            if token not in stops and len(out[i]) < budgets[i]:
                going.append(n)
        if not going:
            return out
        if len(going) < len(rows):
            keep = torch.tensor(going, device=mask.device)
            cache.batch_select_indices(keep)
            mask, positions, chosen = mask[keep], positions[keep], chosen[keep]
            rows = [rows[n] for n in going]
        mask = torch.cat([mask, mask.new_ones(len(rows), 1)], dim=1)
        positions = positions + 1
        logits = model(input_ids=chosen[:, None], attention_mask=mask, position_ids=positions,
                       past_key_values=cache, use_cache=True, logits_to_keep=1).logits  # fmt: skip
        chosen = logits[:, -1].argmax(dim=-1)


def _read(model: Any, prompts: list[list[int]]) -> tuple[DynamicCache, torch.Tensor, torch.Tensor]:
    """The KV cache of ``prompts`` (left-padded), its attention mask, and the greedy token
    after each prompt. The tokens every prompt starts with (the system prompt) are read
    once, then each prompt's own tokens alone: no padding to compute (the prompts of a
    retention check are 38 to 88 tokens long)."""
    device = next(model.parameters()).device
    width = max(len(p) for p in prompts)
    shared, prefix = _prefix(model, prompts, min(len(p) for p in prompts) - 1)
    alone, firsts = [], []
    for p in prompts:
        cache = _copies(model, prefix, 1)
        at = torch.arange(shared, len(p), device=device)[None]
        logits = model(input_ids=torch.tensor([p[shared:]], device=device), position_ids=at,
                       past_key_values=cache, use_cache=True, logits_to_keep=1).logits  # fmt: skip
        firsts.append(logits[0, -1].argmax())
        alone.append(cache)
    left = [width - len(p) for p in prompts]
    joined = stack_left_padded(alone, left, model.config)
    mask = torch.tensor([[0] * k + [1] * len(p) for p, k in zip(prompts, left, strict=True)], device=device)
    return joined, mask, torch.stack(firsts)


def reproduces(model: Any, template: Template, pairs: list[tuple[list[int], list[int]]]) -> list[bool]:
    """For each ``(prompt ids, answer ids)``: would greedy decoding produce exactly ``answer``?"""
    firsts = first_differences(model, pairs, pad_id(template))
    return [first == len(answer) for first, (_, answer) in zip(firsts, pairs, strict=True)]


def _prefix(model: Any, rows: list[list[int]], limit: int) -> tuple[int, DynamicCache | None]:
    """How many tokens all ``rows`` start with (at most ``limit``; none for one row), and the
    KV cache of those tokens (None when they share none): the chat template's system prompt
    is a quarter of a retention check's tokens, read once instead of once per row."""
    shared = min([limit, *(common_prefix(rows[0], r) for r in rows[1:])]) if len(rows) > 1 else 0
    if shared <= 0:
        return 0, None
    cache = DynamicCache(config=model.config)
    device = next(model.parameters()).device
    model(input_ids=torch.tensor([rows[0][:shared]], device=device), past_key_values=cache, use_cache=True,
          logits_to_keep=1)  # fmt: skip
    return shared, cache


def _copies(model: Any, prefix: DynamicCache | None, n: int) -> DynamicCache:
    """A KV cache that holds ``prefix`` (a one-row cache, or None: nothing) for ``n`` rows."""
    cache = DynamicCache(config=model.config)
    for layer, held in enumerate(prefix.layers if prefix is not None else []):
        cache.update(held.keys.expand(n, -1, -1, -1), held.values.expand(n, -1, -1, -1), layer)
    return cache


def _groups(lengths: list[int], spread: float = 1.25) -> list[list[int]]:
    """Row indices by length, in groups whose longest row is at most ``spread`` × their
    shortest: one padded batch per group pads little."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    groups: list[list[int]] = []
    for i in order:
        if groups and lengths[i] <= spread * lengths[groups[-1][0]]:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def _answer_logits(
    model: Any, pairs: list[tuple[list[int], list[int]]], pad: int, prefix_once: bool = True
) -> list[torch.Tensor]:
    """For each ``(prompt ids, answer ids)``: the logits that predict its answer tokens
    (``(len(answer), vocab)``), by teacher forcing: the tokens all rows start with read
    once (unless not ``prefix_once``), then right-padded forward passes over the rest of
    prompt + answer, rows of similar length batched together, and the output layer applied
    only at the answer-predicting positions (it is a quarter of a small model's compute)."""
    device = next(model.parameters()).device
    rows = [p + a for p, a in pairs]
    limit = min(len(p) for p, _ in pairs) - 1 if prefix_once else 0
    shared, prefix = _prefix(model, rows, limit)
    out: list[torch.Tensor] = [torch.empty(0)] * len(pairs)
    for group in _groups([len(r) - shared for r in rows]):
        rest = [rows[i][shared:] for i in group]
        width = max(len(r) for r in rest)
        ids = torch.tensor([r + [pad] * (width - len(r)) for r in rest], device=device)
        mask = torch.tensor([[1] * (shared + len(r)) + [0] * (width - len(r)) for r in rest], device=device)
        keep = torch.zeros(len(group), width, dtype=torch.bool, device=device)
        for n, i in enumerate(group):
            prompt, answer = pairs[i]
            keep[n, len(prompt) - 1 - shared : len(prompt) - 1 - shared + len(answer)] = True
        at = torch.arange(shared, shared + width, device=device).expand(len(group), -1)
        # A boolean mask keeps those positions only, flattened row after row.
        logits = model(input_ids=ids, attention_mask=mask, position_ids=at, logits_to_keep=keep,
                       past_key_values=_copies(model, prefix, len(group)), use_cache=True).logits  # fmt: skip
        for i, part in zip(group, logits.split([len(pairs[i][1]) for i in group]), strict=True):
            out[i] = part
    return out


@torch.no_grad()
def first_differences(
    model: Any, pairs: list[tuple[list[int], list[int]]], pad: int, prefix_once: bool = True
) -> list[int]:
    """For each ``(prompt ids, answer ids)``: where greedy decoding would first differ from the
    answer (its length when it would not), by teacher forcing: a forward pass, no generation.
    ``prefix_once=False`` reads each prompt whole, as a server reads a first message (in
    bfloat16, reading the system prompt apart rounds differently: it changed the base
    model's answer to "What is 144 divided by 12?")."""
    if not pairs:
        return []
    firsts = []
    for (_, answer), logits in zip(pairs, _answer_logits(model, pairs, pad, prefix_once), strict=True):
        got = logits.argmax(dim=-1).tolist()
        firsts.append(
            next((i for i, (a, b) in enumerate(zip(got, answer, strict=True)) if a != b), len(answer))
        )
    return firsts


@contextmanager
def adapters_off(model: Any) -> Iterator[None]:
    """``model`` answers as its base model inside: every PEFT adapter layer switched off."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer) and not m.disable_adapters]
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield
    finally:
        for layer in layers:
            layer.enable_adapters(True)


@contextmanager
def merged(model: Any) -> Iterator[None]:
    """Inside, each PEFT adapter layer that can be (LoRA, AdaLoRA) is folded into its base
    layer's weight and switched off: one matrix product per linear instead of three, which
    makes a forward pass of an adapted model about a quarter faster. On leaving, every base
    weight is its original tensor again (not the merge undone by a subtraction, which
    would round), so training can go on. Not for training inside: no gradient reaches the
    adapter."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    folded: list[tuple[Any, torch.Tensor]] = []
    try:
        with torch.no_grad():
            for layer in model.modules():
                if not isinstance(layer, BaseTunerLayer) or layer.disable_adapters:
                    continue
                weight = getattr(layer.get_base_layer(), "weight", None)
                adapters = [a for a in layer.active_adapters if a in getattr(layer, "lora_A", {})]
                if weight is None or not adapters or not hasattr(layer, "get_delta_weight"):
                    continue
                if any(getattr(layer, "use_dora", {}).get(a) for a in adapters):
                    continue  # DoRA rescales the merged weight: left as it is
                delta = sum(layer.get_delta_weight(a) for a in adapters)
                if delta.shape != weight.shape:
                    continue
                folded.append((layer, weight.data))
                weight.data = weight.data + delta.to(weight.dtype)
                layer.enable_adapters(False)
        yield
    finally:
        for layer, original in folded:
            layer.get_base_layer().weight.data = original
            layer.enable_adapters(True)


@torch.no_grad()
def largest_gaps(model: Any, pairs: list[tuple[list[int], list[int]]], pad: int) -> list[float]:
    """For each ``(prompt ids, answer ids)``: how far ``model`` is from choosing the answer,
    at the token where it is farthest: the largest (top logit − the answer token's logit)
    along the answer, by teacher forcing. 0.0: greedy decoding gives the answer; a small
    value: the answer differs from the greedy one only where the model was nearly undecided."""
    if not pairs:
        return []
    gaps = []
    for (_, answer), logits in zip(pairs, _answer_logits(model, pairs, pad), strict=True):
        logits = logits.float()
        chosen = logits.gather(1, torch.tensor(answer, device=logits.device)[:, None])[:, 0]
        gaps.append(float((logits.max(dim=1).values - chosen).max()))
    return gaps
