"""The Hugging Face transformers engine: the reference engine, adapters and training
compatible, with the conversation's KV cache reused across turns.

Generation is a plain prefill-then-decode loop over ``model(input_ids, past_key_values)``
rather than ``model.generate`` so that the cache can be kept, cropped to the longest
common prefix with the next prompt, and reused; and so that cancelling is immediate.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import torch
from transformers import DynamicCache

from chatforge.engines.base import Engine, GenerationStats, KVState, SamplingParams, common_prefix
from chatforge.engines.sampling import apply_penalties, sample

log = logging.getLogger(__name__)


class TransformersEngine(Engine):
    name = "transformers"

    def __init__(self, model: Any, tokenizer: Any, context_length: int | None = None) -> None:
        config = model.config
        limit = (
            context_length
            or getattr(config, "max_position_embeddings", None)
            or getattr(config, "seq_length", 4096)
        )
        super().__init__(tokenizer, int(limit))
        self.model = model.eval()
        self.device = next(model.parameters()).device
        # One forward pass at a time: the model is not re-entrant across threads.
        self._lock = threading.Lock()

    @torch.inference_mode()
    def _forward(self, ids: list[int], cache: DynamicCache) -> torch.Tensor:
        input_ids = torch.tensor([ids], dtype=torch.long, device=self.device)
        out = self.model(input_ids=input_ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
        return out.logits[:, -1, :]

    def _prepare(self, prompt_ids: list[int], state: KVState | None) -> tuple[DynamicCache, int]:
        """A cache holding a prefix of the prompt, and how long that prefix is."""
        if state is None or state.cache is None:
            return DynamicCache(config=self.model.config), 0
        # At least one prompt token must be computed to get logits for the next token.
        reuse = min(common_prefix(state.ids, prompt_ids), len(prompt_ids) - 1)
        if reuse <= 0:
            return DynamicCache(config=self.model.config), 0
        cache = state.cache
        extra = cache.get_seq_length() - reuse
        if extra > 0:
            cache.crop(-extra)  # transformers 5: a negative count removes that many tokens
        return cache, reuse

    def generate_ids(
        self,
        prompt_ids: list[int],
        params: SamplingParams,
        stats: GenerationStats,
        state: KVState | None = None,
        cancel: threading.Event | None = None,
    ) -> Iterator[int]:
        generator = None
        if params.seed is not None:
            generator = torch.Generator(device=self.device).manual_seed(params.seed)
        with self._lock:
            cache, reused = self._prepare(prompt_ids, state)
            stats.reused_tokens, stats.computed_tokens = reused, len(prompt_ids) - reused
            in_cache = list(prompt_ids[:reused])
            t0 = time.perf_counter()
            logits = self._forward(prompt_ids[reused:], cache)
            in_cache += prompt_ids[reused:]
            stats.prefill_seconds = time.perf_counter() - t0
            vocab = logits.shape[-1]
            seen = torch.tensor([prompt_ids], dtype=torch.long, device=self.device)
            counts = torch.zeros((1, vocab), dtype=torch.float32, device=self.device)
            try:
                while True:
                    logits = apply_penalties(logits.float(), seen, counts, params)
                    token = int(sample(logits, params, generator)[0])
                    yield token
                    if cancel is not None and cancel.is_set():
                        return
                    seen = torch.cat([seen, torch.tensor([[token]], device=self.device)], dim=-1)
                    if token < vocab:
                        counts[0, token] += 1
                    logits = self._forward([token], cache)
                    in_cache.append(token)
            finally:
                if state is not None:
                    state.cache, state.ids = cache, in_cache
