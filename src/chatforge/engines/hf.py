"""The Hugging Face transformers engine: the reference engine, adapters and training
compatible, with the conversation's KV cache reused across turns and concurrent requests
decoded together.

Generation is a plain prefill-then-decode loop over ``model(input_ids, past_key_values)``
rather than ``model.generate`` so that the cache can be kept, cropped to the longest
common prefix with the next prompt, and reused; and so that cancelling is immediate.

Concurrency (continuous batching, :mod:`chatforge.engines.batching`): each request owns a
``DynamicCache``. A new prompt is prefilled on its own cache in chunks between decode
steps; requests that are decoding are stacked into one left-padded batch cache and step
together (one forward pass for all of them). The batch cache lives on while the set of
decoding requests is unchanged; when a request joins or leaves, the rows are split back
into per-request caches and the batch is rebuilt. Models whose caches cannot be stacked
(sliding-window or hybrid layers, prompt-learning adapters) step one request at a time.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from chatforge.engines.base import EngineError, common_prefix
from chatforge.engines.batching import BatchingEngine, Request, Work
from chatforge.models.kvcache import stack_left_padded
from chatforge.tokenizer import Tokenizer

log = logging.getLogger(__name__)


@dataclass(eq=False)
class _Row:
    """A request's cache: its own ``DynamicCache`` unless it currently lives in the batch."""

    cache: DynamicCache | None
    length: int  # tokens in the cache


class TransformersEngine(BatchingEngine):
    name = "transformers"

    def __init__(
        self,
        model: Any,
        tokenizer: Tokenizer,
        context_length: int | None = None,
        n_parallel: int = 8,
        prefill_chunk: int = 512,
        n_threads: int | None = None,
    ) -> None:
        config = model.config
        limit = (
            context_length
            or getattr(config, "max_position_embeddings", None)
            or getattr(config, "seq_length", 4096)
        )
        super().__init__(
            tokenizer, int(limit), max_batch=n_parallel, max_step_tokens=prefill_chunk + n_parallel
        )
        if n_threads:
            torch.set_num_threads(n_threads)
        self.model = model.eval()
        self.device = next(model.parameters()).device
        # One forward pass at a time: the model is not re-entrant across threads.
        self._lock = threading.Lock()
        self._stackable = _stackable(model)
        # P-Tuning v2 (peft prefix tuning): every conversation's cache starts with the
        # learned prefix keys/values, and the base model runs on it, as in training.
        self._prefix = _prefix_length(model)
        self._runner = model.get_base_model() if self._prefix else model
        self._members: list[Request] = []  # the requests in the batch cache, in row order
        self._batch: DynamicCache | None = None
        self._pads: list[int] = []  # left padding of each row

    def _new_cache(self) -> DynamicCache:
        if self._prefix:
            with torch.inference_mode():
                return self.model.get_prompt(batch_size=1)
        return DynamicCache(config=self.model.config)

    # -- batching hooks --------------------------------------------------------------
    def _admit(self, request: Request) -> bool:
        state, prompt = request.state, request.prompt_ids
        cache, reuse = None, 0
        if state is not None and isinstance(state.cache, DynamicCache):
            # At least one prompt token must be computed to get logits for the next token.
            reuse = min(common_prefix(state.ids, prompt), len(prompt) - 1)
            if reuse > 0:
                cache = state.cache
                extra = cache.get_seq_length() - self._prefix - reuse
                if extra > 0:
                    cache.crop(-extra)  # transformers 5: a negative count removes that many tokens
            state.cache, state.ids = None, []  # the request owns the cache until it ends
        reuse = max(reuse, 0) if cache is not None else 0
        request.slot = _Row(cache if cache is not None else self._new_cache(), reuse)
        request.todo = prompt[reuse:]
        request.stats.reused_tokens, request.stats.computed_tokens = reuse, len(prompt) - reuse
        return True

    @torch.inference_mode()
    def _forward(self, work: list[Work]) -> list[np.ndarray | None]:
        rows: dict[int, np.ndarray | None] = {}
        decoding = [w for w in work if w.request.slot.length > 0 and len(w.ids) == 1 and w.logits]
        if len(decoding) < 2 or not self._stackable:
            decoding = []
        batched = {id(w) for w in decoding}
        with self._lock:
            if {id(r) for r in self._members} != {id(w.request) for w in decoding}:
                self._dissolve()
            for item in work:
                if id(item) not in batched:
                    rows[id(item)] = self._forward_one(item)
            if decoding:
                if not self._members:
                    self._assemble([w.request for w in decoding])
                by_request = {id(w.request): w for w in decoding}
                logits = self._forward_batch([by_request[id(r)].ids[0] for r in self._members])
                for i, member in enumerate(self._members):
                    rows[id(by_request[id(member)])] = logits[i]
        return [rows[id(w)] for w in work]

    def _forward_one(self, item: Work) -> np.ndarray | None:
        row: _Row = item.request.slot
        if row.cache is None:  # it was in the batch: take it back out first
            self._dissolve()
        input_ids = torch.tensor([item.ids], dtype=torch.long, device=self.device)
        out = self._runner(input_ids=input_ids, past_key_values=row.cache, use_cache=True, logits_to_keep=1)
        row.length += len(item.ids)
        return out.logits[0, -1].float().cpu().numpy() if item.logits else None

    def _forward_batch(self, tokens: list[int]) -> np.ndarray:
        lengths = [m.slot.length for m in self._members]
        total = self._batch.get_seq_length()
        mask = torch.ones((len(tokens), total + 1), dtype=torch.long, device=self.device)
        for i, pad in enumerate(self._pads):
            mask[i, :pad] = 0
        positions = torch.tensor([[n] for n in lengths], dtype=torch.long, device=self.device)
        input_ids = torch.tensor([[t] for t in tokens], dtype=torch.long, device=self.device)
        out = self.model(
            input_ids=input_ids,
            attention_mask=mask,
            position_ids=positions,
            past_key_values=self._batch,
            use_cache=True,
            logits_to_keep=1,
        )
        for member in self._members:
            member.slot.length += 1
        return out.logits[:, -1].float().cpu().numpy()

    def _assemble(self, requests: list[Request]) -> None:
        """Stack the requests' caches into one left-padded batch cache."""
        caches = [r.slot.cache for r in requests]
        longest = max(r.slot.length for r in requests)
        self._pads = [longest - r.slot.length for r in requests]
        self._batch = stack_left_padded(caches, self._pads, self.model.config)
        self._members = list(requests)
        for r in requests:
            r.slot.cache = None

    def _dissolve(self) -> None:
        """Split the batch cache back into per-request caches."""
        if self._batch is None:
            return
        for i, (member, pad) in enumerate(zip(self._members, self._pads)):
            data = [
                (layer.keys[i : i + 1, :, pad:].clone(), layer.values[i : i + 1, :, pad:].clone())
                for layer in self._batch.layers
            ]
            member.slot.cache = DynamicCache(data, config=self.model.config)
        self._batch, self._members, self._pads = None, [], []

    def _release(self, request: Request, keep: int) -> None:
        row: _Row | None = request.slot
        if row is None:
            return
        with self._lock:
            if row.cache is None:
                self._dissolve()
        state = request.state
        if state is None:
            return
        cache = row.cache
        keep = min(keep, row.length)
        extra = cache.get_seq_length() - self._prefix - keep
        if extra > 0:
            cache.crop(-extra)
        state.cache, state.ids = cache, list((request.prompt_ids + request.generated)[:keep])


def _prefix_length(model: Any) -> int:
    """Virtual tokens of an attached prefix-tuning adapter (0 without one)."""
    config = getattr(model, "active_peft_config", None)
    if config is None or not getattr(config, "is_prompt_learning", False):
        return 0
    kind = str(getattr(config.peft_type, "value", config.peft_type))
    if kind != "PREFIX_TUNING":
        raise EngineError(
            f"{kind} adapters are not supported for serving; P-Tuning v2 (prefix tuning) and LoRA/AdaLoRA are"
        )
    return int(config.num_virtual_tokens)


def _stackable(model: Any) -> bool:
    """Whether requests' caches can be stacked into one batch (plain full-attention layers)."""
    peft = getattr(model, "peft_config", None)
    if isinstance(peft, dict) and any(getattr(c, "is_prompt_learning", False) for c in peft.values()):
        return False
    try:
        cache = DynamicCache(config=model.config)
    except Exception:  # noqa: BLE001 - exotic configs step one request at a time
        return False
    return bool(cache.layers) and all(type(layer) is DynamicLayer for layer in cache.layers)
