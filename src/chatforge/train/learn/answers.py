"""Greedy answers, and the cheap test of whether a model would give a known answer.

:func:`greedy` generates in one left-padded batch per chunk and returns token ids beside
the text, so that a base model's answer can later be tested token for token.
:func:`reproduces` does that test without generating: one forward pass over prompt +
answer, and the answer is what greedy decoding gives exactly when every answer token is
the arg-max after its prefix (teacher forcing). That makes the stopping criterion a
forward pass per check instead of a generation.
"""

from __future__ import annotations

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


def _pad_id(template: Template) -> int:
    tok = template.tokenizer
    return int(tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)


@torch.no_grad()
def greedy(
    model: Any, template: Template, questions: list[str], max_new_tokens: int, chunk: int = 8
) -> list[Answer]:
    """Greedy answers to ``questions`` (left-padded batches of ``chunk``), parsed by the template."""
    stops = set(template.stop_token_ids)
    pad = _pad_id(template)
    device = next(model.parameters()).device
    answers: list[Answer] = []
    for start in range(0, len(questions), chunk):
        part = questions[start : start + chunk]
        prompts = [prompt_ids(template, q) for q in part]
        width = max(len(p) for p in prompts)
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=sorted(stops),
            pad_token_id=pad,
        )
        for question, row in zip(part, out[:, width:].tolist(), strict=True):
            end = next((i for i, t in enumerate(row) if t in stops), None)
            kept = row if end is None else row[: end + 1]
            text_ids = kept[:-1] if end is not None else kept
            text = template.tokenizer.decode(text_ids, skip_special_tokens=True)
            answers.append(Answer(question, template.parse(text).content.strip(), kept))
    return answers


def reproduces(model: Any, template: Template, pairs: list[tuple[list[int], list[int]]]) -> list[bool]:
    """For each ``(prompt ids, answer ids)``: would greedy decoding produce exactly ``answer``?"""
    firsts = first_differences(model, pairs, _pad_id(template))
    return [first == len(answer) for first, (_, answer) in zip(firsts, pairs, strict=True)]


@torch.no_grad()
def first_differences(model: Any, pairs: list[tuple[list[int], list[int]]], pad: int) -> list[int]:
    """For each ``(prompt ids, answer ids)``: where greedy decoding would first differ from the
    answer (its length when it would not), by teacher forcing in one right-padded forward
    pass; position ``t`` predicts token ``t + 1``."""
    if not pairs:
        return []
    device = next(model.parameters()).device
    rows = [p + a for p, a in pairs]
    width = max(len(r) for r in rows)
    ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows], device=device)
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], device=device)
    predicted = model(input_ids=ids, attention_mask=mask).logits.argmax(dim=-1).tolist()
    firsts = []
    for (prompt, answer), row in zip(pairs, predicted, strict=True):
        got = row[len(prompt) - 1 : len(prompt) - 1 + len(answer)]
        firsts.append(
            next((i for i, (a, b) in enumerate(zip(got, answer, strict=True)) if a != b), len(answer))
        )
    return firsts
