"""Transformers KV caches joined into one batch."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from transformers import DynamicCache


def stack_left_padded(caches: list[DynamicCache], pads: list[int], config: Any) -> DynamicCache:
    """One batch cache of one-row ``caches``, each row's keys and values left-padded with
    ``pads`` zero positions (which the batch's attention mask leaves out)."""
    data = []
    for layer in range(len(caches[0].layers)):
        keys = [
            F.pad(c.layers[layer].keys, (0, 0, p, 0)) if p else c.layers[layer].keys
            for c, p in zip(caches, pads, strict=True)
        ]
        values = [
            F.pad(c.layers[layer].values, (0, 0, p, 0)) if p else c.layers[layer].values
            for c, p in zip(caches, pads, strict=True)
        ]
        data.append((torch.cat(keys), torch.cat(values)))
    return DynamicCache(data, config=config)
