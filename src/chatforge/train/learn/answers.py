"""Greedy answers, and the cheap test of whether a model would give a known answer.

:func:`greedy` generates in one left-padded batch per chunk and returns token ids beside
the text, so that a base model's answer can later be tested token for token.
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

from chatforge.messages import Message, Role
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
    pad = pad_id(template)
    device = next(model.parameters()).device
    out_rows: list[list[int]] = []
    for start in range(0, len(prompts), chunk):
        part = prompts[start : start + chunk]
        budget = max(budgets[start : start + chunk])
        width = max(len(p) for p in part)
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in part], device=device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in part], device=device)
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=budget,
            do_sample=False,
            eos_token_id=sorted(stops),
            pad_token_id=pad,
            use_cache=True,  # off in a model being trained; generating without it is quadratic
        )
        for i, row in enumerate(out[:, width:].tolist()):
            row = row[: budgets[start + i]]
            end = next((j for j, t in enumerate(row) if t in stops), None)
            out_rows.append(row if end is None else row[: end + 1])
    return out_rows


def reproduces(model: Any, template: Template, pairs: list[tuple[list[int], list[int]]]) -> list[bool]:
    """For each ``(prompt ids, answer ids)``: would greedy decoding produce exactly ``answer``?"""
    firsts = first_differences(model, pairs, pad_id(template))
    return [first == len(answer) for first, (_, answer) in zip(firsts, pairs, strict=True)]


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


def _answer_logits(model: Any, pairs: list[tuple[list[int], list[int]]], pad: int) -> list[torch.Tensor]:
    """For each ``(prompt ids, answer ids)``: the logits that predict its answer tokens
    (``(len(answer), vocab)``), by teacher forcing: right-padded forward passes over
    prompt + answer, rows of similar length batched together, and the output layer applied
    only at the answer-predicting positions (it is a quarter of a small model's compute)."""
    device = next(model.parameters()).device
    rows = [p + a for p, a in pairs]
    out: list[torch.Tensor] = [torch.empty(0)] * len(pairs)
    for group in _groups([len(r) for r in rows]):
        width = max(len(rows[i]) for i in group)
        ids = torch.tensor([rows[i] + [pad] * (width - len(rows[i])) for i in group], device=device)
        mask = torch.tensor([[1] * len(rows[i]) + [0] * (width - len(rows[i])) for i in group], device=device)
        keep = torch.zeros(len(group), width, dtype=torch.bool, device=device)
        for n, i in enumerate(group):
            prompt, answer = pairs[i]
            keep[n, len(prompt) - 1 : len(prompt) - 1 + len(answer)] = True
        # A boolean mask keeps those positions only, flattened row after row.
        logits = model(input_ids=ids, attention_mask=mask, logits_to_keep=keep).logits
        for i, part in zip(group, logits.split([len(pairs[i][1]) for i in group]), strict=True):
            out[i] = part
    return out


@torch.no_grad()
def first_differences(model: Any, pairs: list[tuple[list[int], list[int]]], pad: int) -> list[int]:
    """For each ``(prompt ids, answer ids)``: where greedy decoding would first differ from the
    answer (its length when it would not), by teacher forcing: a forward pass, no generation."""
    if not pairs:
        return []
    firsts = []
    for (_, answer), logits in zip(pairs, _answer_logits(model, pairs, pad), strict=True):
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
