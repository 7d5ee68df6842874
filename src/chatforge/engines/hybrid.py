"""The hybrid engine: transformers' bf16 prefill, llama.cpp's quantized decode.

On a CPU with bf16 matrix units PyTorch computes a long prompt in bf16 faster than
llama.cpp does with Q4 weights (about six times against llama.cpp's generic kernels on an
AMX CPU, 1.8x against its AMX path or with AVX512-BF16 alone), while llama.cpp decodes about
four times as fast (docs/models.md, docs/benchmarks.md). This engine takes the better half of each: it
is the llama.cpp engine (same batching, sequences, prefix reuse and sampling), except
that a prompt with at least ``min_prefill`` new tokens is run through the transformers
model, and the keys and values that produced are written into the llama.cpp sequence
through its state API (:mod:`chatforge.engines.kvstate`); the first new token is sampled
from the transformers model's logits, and llama.cpp decodes from there as usual. A follow-up turn's cached prefix is read
back from llama.cpp the same way, so the new tokens attend to it.

The two models must be the same weights: the GGUF file and a Hugging Face directory of
it (for the embedded default, the bf16 copy chatforge converts once). At start-up a
probe runs a short prompt through both and compares the caches; it also finds out
whether llama.cpp stores each head's rotary pairs interleaved (llama-architecture GGUF
conversions permute Q and K) or split in halves (Qwen2 and most others), and refuses the
hybrid path, falling back to llama.cpp's own prefill with a warning, when neither
layout matches. The caches differ by the quantization noise of the Q4 weights (about
1-3% of their magnitude); the test suite checks the decoded tokens agree with llama.cpp's.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from chatforge.engines import amx
from chatforge.engines.base import EngineError
from chatforge.engines.batching import Request
from chatforge.engines.kvstate import SeqState, StateFormatError
from chatforge.engines.llamacpp import LlamaCppEngine, _Sequence
from chatforge.tokenizer import Tokenizer

log = logging.getLogger(__name__)

# Measured on the default model (benchmarks/prefill_crossover.py, docs/benchmarks.md), the
# new prompt tokens from which the hybrid prefill is faster than llama.cpp's own: with the
# generic kernels both take as long at 16 and the hybrid one is 1.8x faster at 32; llama.cpp's
# AMX path computes short prompts two to three times as fast, and the two meet between 112 and 128.
DEFAULT_MIN_PREFILL = 32
AMX_MIN_PREFILL = 128
_PROBE_TOLERANCE = 0.1  # mean relative difference of the layer-0 keys the probe accepts


def _halves_to_pairs(head_dim: int) -> np.ndarray:
    """Index map from a rotate-half head layout (i, i+d/2) to an interleaved one (2i, 2i+1)."""
    half = head_dim // 2
    order = np.empty(head_dim, dtype=np.int64)
    order[0::2] = np.arange(half)
    order[1::2] = np.arange(half, head_dim)
    return order


class _LastPositionOnly:
    """A decoder layer's MLP computed at one position per row (``last``), zeros elsewhere."""

    def __init__(self, mlp: Any, last: Any) -> None:
        self.mlp = mlp
        self.last = last

    def __call__(self, hidden: Any) -> Any:
        import torch

        rows = torch.arange(hidden.shape[0])
        out = hidden.new_zeros(hidden.shape)
        out[rows, self.last] = self.mlp(hidden[rows, self.last].unsqueeze(1)).squeeze(1)
        return out


@contextlib.contextmanager
def _last_layer_mlp_for_last_position(model: Any, last: Any) -> Iterator[None]:
    """During a prefill the last decoder layer's output matters at each row's last prompt
    position only (``last``: its index per row; the layer's keys and values come from its
    input, and the logits are kept there alone), so its MLP, the larger part of a layer,
    is computed there alone: 1/24 less work for the default model, the same logits.
    Models laid out otherwise (no dense ``...MLP`` module there, e.g. a mixture of experts
    returning router logits) run whole."""
    layers = getattr(getattr(model, "model", None), "layers", None)
    final = layers[-1] if layers is not None and len(layers) else None
    mlp = getattr(final, "mlp", None)
    if mlp is None or not type(mlp).__name__.endswith("MLP"):
        yield
        return
    final.__dict__["mlp"] = _LastPositionOnly(mlp, last)  # shadows the submodule for this call
    try:
        yield
    finally:
        del final.__dict__["mlp"]


def prefill_groups(lengths: list[int], max_waste: int = 64, max_tokens: int = 2048) -> list[list[int]]:
    """Indices of prompts to compute together, one forward pass per group.

    A pass reads every weight once whatever its size (on the default model about 85 ms of
    a 34-token prompt's 105 ms), so prompts that arrive together are best computed in one
    batch; a batch is as long as its longest prompt, though, and the padding of shorter
    ones is computed too. Prompts sorted by length join a group while its padding stays
    within ``max_waste`` tokens and the padded batch within ``max_tokens``."""
    groups: list[list[int]] = []
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    for i in order:
        group = groups[-1] if groups else None
        if group is not None:
            longest = lengths[i]  # sorted: the newcomer is the longest
            padded = longest * (len(group) + 1)
            waste = padded - sum(lengths[j] for j in group) - lengths[i]
            if waste <= max_waste and padded <= max_tokens:
                group.append(i)
                continue
        groups.append([i])
    return groups


class HybridEngine(LlamaCppEngine):
    name = "hybrid"

    def __init__(
        self,
        model_path: str | Path,
        tokenizer: Tokenizer,
        prefill_model: str | Path | Any,
        *,
        min_prefill: int | None = None,
        prefill_dtype: str = "bfloat16",
        **options: Any,
    ) -> None:
        super().__init__(model_path, tokenizer, **options)
        if min_prefill is None:
            min_prefill = AMX_MIN_PREFILL if self.extra_buffers else DEFAULT_MIN_PREFILL
        self.min_prefill = max(2, int(min_prefill))
        self._hf = self._load_prefill_model(prefill_model, prefill_dtype)
        config = self._hf.config
        self._n_layers = int(config.num_hidden_layers)
        self._kv_heads = int(getattr(config, "num_key_value_heads", None) or config.num_attention_heads)
        self._head_dim = int(
            getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        )
        self._order: np.ndarray | None = None  # per-head column order llama.cpp uses
        self._layout: dict[str, Any] = {}
        self.hybrid_prefill = False
        self.prefilled_tokens = 0  # prompt tokens computed by the transformers model so far
        self.prefill_passes = 0  # forward passes of the transformers model that computed them
        self._pending: list[Request] = []  # admitted, their prompts to compute at the next step
        try:
            self._probe()
            self.hybrid_prefill = True
        except (EngineError, StateFormatError, ValueError) as err:
            log.warning("hybrid prefill is off, llama.cpp computes prompts itself: %s", err)

    # -- set-up ------------------------------------------------------------------
    @staticmethod
    def _load_prefill_model(source: str | Path | Any, dtype: str) -> Any:
        if not isinstance(source, (str, Path)):
            return source.eval()
        import torch
        from transformers import AutoModelForCausalLM

        started = time.perf_counter()
        model = AutoModelForCausalLM.from_pretrained(
            source, dtype=getattr(torch, dtype), local_files_only=True
        ).eval()
        log.info("hybrid prefill model loaded from %s in %.1f s", source, time.perf_counter() - started)
        return model

    def _probe(self) -> None:
        """Compare both engines' caches on a short prompt and learn llama.cpp's layout."""
        ids = self.tokenizer("The probe: 1, 2, 3. 你好，世界。")["input_ids"][:24]
        sequence = self._sequences[0]
        self._clear(sequence)
        try:
            amx.LLAMA_THREAD.run(self._llama_prefill, sequence, ids)  # never where PyTorch runs
            state = self._read(sequence)
        finally:
            self._clear(sequence)
        if state.n_cells != len(ids) or len(state.keys) != self._n_layers:
            raise EngineError(
                f"llama.cpp holds {state.n_cells} cells in {len(state.keys)} layers, "
                f"the prefill model has {self._n_layers} layers"
            )
        width = self._kv_heads * self._head_dim
        if state.keys[0].shape[1] != width or state.values[0].shape[1] != width:
            raise EngineError(
                f"KV rows are {state.keys[0].shape[1]} wide in llama.cpp and {width} in the prefill model"
            )
        keys, _, _ = self._hf_prefill(ids, None)
        mine = keys[0][0].transpose(0, 1).reshape(len(ids), self._kv_heads, self._head_dim).float().numpy()
        theirs = state.keys[0].astype(np.float32).reshape(len(ids), self._kv_heads, self._head_dim)
        scale = float(np.abs(theirs).mean()) or 1.0
        errors = {}
        for label, order in (("halves", None), ("interleaved", _halves_to_pairs(self._head_dim))):
            candidate = mine if order is None else mine[..., order]
            errors[label] = float(np.abs(candidate - theirs).mean()) / scale
        label = min(errors, key=errors.get)
        if errors[label] > _PROBE_TOLERANCE:
            raise EngineError(
                f"the prefill model's keys differ from llama.cpp's by {errors[label]:.0%} "
                "(are they the same weights?)"
            )
        self._order = None if label == "halves" else _halves_to_pairs(self._head_dim)
        self._layout = {
            "n_stream": state.n_stream,
            "v_trans": state.v_trans,
            "k_type": state.k_type,
            "v_type": state.v_type,
            "rotary": label,
            "probe_error": errors[label],
        }
        log.info("hybrid prefill on (rotary layout %s, probe difference %.2f%%)", label, 100 * errors[label])

    # -- the hybrid prefill --------------------------------------------------------
    # The prompts admitted by a step are computed at its start in batched transformers
    # passes (four requests arriving together cost one pass instead of four), where a pass
    # would hold at least ``min_prefill`` new tokens; llama.cpp computes the others itself,
    # a chunk per step beside the decoding requests.
    def _admit(self, request: Request) -> bool:
        if not super()._admit(request):
            return False
        if self.hybrid_prefill and len(request.todo) > 1:
            self._pending.append(request)
        return True

    def _step(self) -> bool:
        pending = [r for r in self._pending if r in self._active and not r.finished and r.todo]
        self._pending = []
        for group in prefill_groups([len(r.todo) for r in pending]):
            if sum(len(pending[i].todo) for i in group) >= self.min_prefill:
                self._prefill([pending[i] for i in group])
        return super()._step()

    def _prefill(self, requests: list[Request]) -> None:
        """Compute the requests' remaining prompt ids after their sequences' caches in one
        transformers pass, store the keys and values in llama.cpp and leave each request
        its next-token logits; a request whose prefill fails is computed by llama.cpp."""
        started = time.perf_counter()
        done: set[int] = set()
        try:
            pasts = [self._read(r.slot) if r.slot.ids else None for r in requests]
            computed = self._hf_prefill_batch([(r.todo, past) for r, past in zip(requests, pasts)])
            for request, (keys, values, logits) in zip(requests, computed):
                self._store(request.slot, keys, values, request.todo)
                request.ready, request.todo = logits[: self.n_vocab], []
                done.add(id(request))
        except Exception as err:  # noqa: BLE001 - llama.cpp computes those prompts itself instead
            log.warning("hybrid prefill failed, llama.cpp computes the prompt: %s", err)
            for request in requests:
                if id(request) not in done:
                    self._clear_cells(request.slot)
                    request.todo = list(request.prompt_ids)
                    request.stats.reused_tokens = 0
                    request.stats.computed_tokens = len(request.prompt_ids)
        self.prefill_passes += 1
        elapsed = time.perf_counter() - started
        for request in requests:
            request.stats.prefill_seconds += elapsed

    def _store(self, sequence: _Sequence, keys: list[Any], values: list[Any], new_ids: list[int]) -> None:
        """Write a prefix's keys and values, ``(1, heads, tokens, dim)`` per layer, into the
        sequence's llama.cpp cache."""
        n = keys[0].shape[2]
        state = SeqState(
            seq_id=sequence.seq_id,
            n_stream=self._layout["n_stream"],
            stream=sequence.seq_id if self._layout["n_stream"] > 1 else 0,
            positions=np.arange(n, dtype=np.int32),
            keys=[self._rows(k, self._order) for k in keys],
            values=[self._rows(v, None) for v in values],
            v_trans=self._layout["v_trans"],
            k_type=self._layout["k_type"],
            v_type=self._layout["v_type"],
        )
        self._write(sequence, state)
        sequence.ids = sequence.ids + list(new_ids)
        self.prefilled_tokens += len(new_ids)

    def _hf_prefill(self, ids: list[int], past: SeqState | None) -> tuple[list[Any], list[Any], np.ndarray]:
        """Keys and values, ``(1, heads, tokens, dim)`` per layer, of the cached prefix plus
        ``ids``, and the logits after the last of ``ids`` (float32)."""
        return self._hf_prefill_batch([(ids, past)])[0]

    def _hf_prefill_batch(
        self, rows: list[tuple[list[int], SeqState | None]]
    ) -> list[tuple[list[Any], list[Any], np.ndarray]]:
        """:meth:`_hf_prefill` for several prompts in one forward pass, on PyTorch's own thread:
        its bf16 kernels release the AMX tiles that llama.cpp, on the batch thread, set up once
        (:mod:`chatforge.engines.amx`)."""
        return amx.TORCH_THREAD.run(self._hf_forward, rows)

    def _hf_forward(
        self, rows: list[tuple[list[int], SeqState | None]]
    ) -> list[tuple[list[Any], list[Any], np.ndarray]]:
        """The forward pass of :meth:`_hf_prefill_batch`.

        Row i holds its cached prefix (``p_i`` cells) right-aligned in a cache of the longest
        prefix's length P, the cells before it masked out, and its new ids left-aligned in
        an input of the longest one's length N, padded after them: a padding position comes
        after every real one of its row, so the causal mask alone keeps it unseen, and
        every query sees at least itself (no row of the attention is wholly masked)."""
        import torch
        from transformers import DynamicCache

        dtype = next(self._hf.parameters()).dtype
        prefixes = [0 if past is None else past.n_cells for _, past in rows]
        lengths = [len(ids) for ids, _ in rows]
        width, longest, batch = max(prefixes), max(lengths), len(rows)
        cache = DynamicCache(config=self._hf.config)
        if width:
            inverse = None if self._order is None else np.argsort(self._order)
            for layer in range(self._n_layers):
                shape = (batch, self._kv_heads, width, self._head_dim)
                keys, values = torch.zeros(shape, dtype=dtype), torch.zeros(shape, dtype=dtype)
                for i, (_, past) in enumerate(rows):
                    if past is not None and past.n_cells:
                        cells = slice(width - past.n_cells, width)
                        keys[i, :, cells] = self._tensor(past.keys[layer], inverse, dtype)[0]
                        values[i, :, cells] = self._tensor(past.values[layer], None, dtype)[0]
                cache.update(keys, values, layer)
        input_ids = torch.tensor([ids + [ids[-1]] * (longest - len(ids)) for ids, _ in rows])
        options: dict[str, Any] = {}
        if batch > 1 or width:
            options["position_ids"] = torch.tensor(
                [[p + j for j in range(longest)] for p in prefixes], dtype=torch.long
            )
        if any(p < width for p in prefixes):
            mask = torch.ones(batch, width + longest, dtype=torch.long)
            for i, p in enumerate(prefixes):
                mask[i, : width - p] = 0
            options["attention_mask"] = mask
        last = torch.tensor([n - 1 for n in lengths])
        keep = sorted(set(last.tolist()))  # the positions whose logits are wanted
        with torch.inference_mode(), _last_layer_mlp_for_last_position(self._hf, last):
            out = self._hf(
                input_ids=input_ids,
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=1 if keep == [longest - 1] else torch.tensor(keep),
                **options,
            )
        layers = out.past_key_values.layers
        results = []
        for i, (p, n) in enumerate(zip(prefixes, lengths)):
            cells = slice(width - p, width + n)
            row = out.logits[i, keep.index(n - 1)].float().numpy()
            keys = [layer.keys[i : i + 1, :, cells] for layer in layers]
            values = [layer.values[i : i + 1, :, cells] for layer in layers]
            results.append((keys, values, row))
        return results

    def _rows(self, tensor: Any, order: np.ndarray | None) -> np.ndarray:
        """``(1, heads, tokens, dim)`` → llama.cpp's ``(tokens, heads * dim)`` rows in float16."""
        import torch

        array = tensor[0].transpose(0, 1).to(torch.float16).numpy()
        if order is not None:
            array = array[..., order]
        return np.ascontiguousarray(array).reshape(array.shape[0], -1)

    def _tensor(self, rows: np.ndarray, order: np.ndarray | None, dtype: Any) -> Any:
        import torch

        array = rows.astype(np.float32).reshape(rows.shape[0], self._kv_heads, self._head_dim)
        if order is not None:
            array = array[..., order]
        return torch.from_numpy(np.ascontiguousarray(array.transpose(1, 0, 2))).unsqueeze(0).to(dtype)

    # -- llama.cpp's side ----------------------------------------------------------
    def _llama_prefill(self, sequence: _Sequence, ids: list[int]) -> None:
        batch = self._batch
        for j, token in enumerate(ids):
            batch.token[j] = token
            batch.pos[j] = j
            batch.n_seq_id[j] = 1
            batch.seq_id[j][0] = sequence.seq_id
            batch.logits[j] = int(j == len(ids) - 1)
        batch.n_tokens = len(ids)
        if self._lib.llama_decode(self._ctx, batch) != 0:
            raise EngineError("llama.cpp could not compute the probe prompt")
        sequence.ids = list(ids)

    def describe(self) -> dict[str, Any]:
        return {
            "hybrid_prefill": self.hybrid_prefill,
            "min_prefill": self.min_prefill,
            "prefilled_tokens": self.prefilled_tokens,
            **self._layout,
        }
