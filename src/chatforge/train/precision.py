"""Frozen linear layers held in bfloat16 while training under bf16 autocast.

Under ``torch.autocast`` a float32 ``nn.Linear`` weight is cast to bfloat16 at every use.
Autocast caches that cast only for weights that require a gradient, so the frozen base
model of an adapter (LoRA, AdaLoRA, P-Tuning) is copied in full at every forward pass:
the tuned pass and, with ``training.kl_to_base``, the base model's pass too. On a 2-core
CPU, casting once saved a few percent of a ``chatforge learn`` step (most of that step's
copies were AdaLoRA's own: :mod:`.lean_adalora`).

:func:`frozen_linears_in_bf16` casts each frozen float32 linear weight (and bias) once
for the whole run. Autocast would have cast it the same way (round to nearest) before
every matrix product, so training computes exactly what it did before. Embeddings and
norms are left in float32: autocast does not cast them. On leaving, every layer has its
original float32 parameters again; :func:`full_precision` does the same for a while in
the middle of training, for work that must see the float32 weights (``chatforge learn``'s
checks).

:func:`parameters_in_bf16` is the other way round: for a while, a float32 model computes
as the same model loaded in bfloat16 does (``chatforge serve``'s default on a CPU or GPU
with bf16): every parameter cast, buffers such as the rotary frequencies left in float32
as loading keeps them. The logits are bit-identical to the loaded model's (measured on
the default model).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

_ORIGINALS = "_chatforge_float32"  # on a swapped layer: its float32 (weight, bias) parameters


def _frozen_float32_linears(model: nn.Module) -> list[nn.Linear]:
    linears = [m for m in model.modules() if type(m) is nn.Linear]
    uses: dict[int, int] = {}
    for m in model.modules():
        for p in m.parameters(recurse=False):
            uses[id(p)] = uses.get(id(p), 0) + 1

    def frozen(p: nn.Parameter | None) -> bool:
        return p is None or (not p.requires_grad and p.dtype == torch.float32 and uses[id(p)] == 1)

    # A weight shared with another module (tied input embeddings) stays: the embedding
    # lookup is not autocast, so it must keep reading float32.
    return [m for m in linears if m.weight is not None and frozen(m.weight) and frozen(m.bias)]


def _bf16(p: nn.Parameter | None) -> nn.Parameter | None:
    return None if p is None else nn.Parameter(p.detach().to(torch.bfloat16), requires_grad=False)


@contextmanager
def frozen_linears_in_bf16(model: nn.Module) -> Iterator[int]:
    """Inside, every frozen float32 ``nn.Linear`` of ``model`` holds bfloat16 parameters;
    yields how many layers were cast. Only for use under bf16 autocast, where it changes no
    result."""
    layers = _frozen_float32_linears(model)
    try:
        for m in layers:
            setattr(m, _ORIGINALS, (m.weight, m.bias))
            m.weight, m.bias = _bf16(m.weight), _bf16(m.bias)
        yield len(layers)
    finally:
        for m in layers:
            if hasattr(m, _ORIGINALS):
                m.weight, m.bias = getattr(m, _ORIGINALS)
                delattr(m, _ORIGINALS)


@contextmanager
def full_precision(model: nn.Module) -> Iterator[None]:
    """Inside, the layers :func:`frozen_linears_in_bf16` cast hold their float32 parameters
    again (the same tensors, nothing recomputed); outside, their bfloat16 ones. A no-op
    for a model that has none."""
    swapped = [m for m in model.modules() if hasattr(m, _ORIGINALS)]
    held: list[tuple[Any, Any]] = []
    try:
        for m in swapped:
            held.append((m.weight, m.bias))
            m.weight, m.bias = getattr(m, _ORIGINALS)
        yield
    finally:
        for m, (weight, bias) in zip(swapped, held, strict=False):
            m.weight, m.bias = weight, bias


@contextmanager
def parameters_in_bf16(model: nn.Module) -> Iterator[None]:
    """Inside, every float32 parameter of ``model`` holds a bfloat16 copy of its values;
    on leaving, its original tensor again (nothing rounded). For inference only."""
    held: list[tuple[nn.Parameter, torch.Tensor]] = []
    try:
        with torch.no_grad():
            for p in model.parameters():
                if p.dtype == torch.float32:
                    held.append((p, p.data))
                    p.data = p.data.to(torch.bfloat16)
        yield
    finally:
        for p, original in held:
            p.data = original
