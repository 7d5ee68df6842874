"""The hybrid engine: transformers' bf16 prefill, llama.cpp's quantized decode.

On a CPU with bf16 matrix units PyTorch computes a long prompt in bf16 faster than
llama.cpp does with Q4 weights (about six times with AMX, 1.8x with AVX512-BF16 alone),
while llama.cpp decodes about four times as fast (MODELS.md, docs/benchmarks.md). This engine takes the better half of each: it
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

from chatforge.engines.base import EngineError
from chatforge.engines.batching import Request
from chatforge.engines.kvstate import SeqState, StateFormatError
from chatforge.engines.llamacpp import LlamaCppEngine, _Sequence

log = logging.getLogger(__name__)

# Measured on the default model (benchmarks/prefill_crossover.py, docs/benchmarks.md): at 16
# new prompt tokens both prefills take as long, at 32 the hybrid one is 1.5x faster.
DEFAULT_MIN_PREFILL = 32
_PROBE_TOLERANCE = 0.1  # mean relative difference of the layer-0 keys the probe accepts


def _halves_to_pairs(head_dim: int) -> np.ndarray:
    """Index map from a rotate-half head layout (i, i+d/2) to an interleaved one (2i, 2i+1)."""
    half = head_dim // 2
    order = np.empty(head_dim, dtype=np.int64)
    order[0::2] = np.arange(half)
    order[1::2] = np.arange(half, head_dim)
    return order


class _LastPositionOnly:
    """A decoder layer's MLP computed for the last position alone (zeros elsewhere)."""

    def __init__(self, mlp: Any) -> None:
        self.mlp = mlp

    def __call__(self, hidden: Any) -> Any:
        out = hidden.new_zeros(hidden.shape)
        out[:, -1:] = self.mlp(hidden[:, -1:])
        return out


@contextlib.contextmanager
def _last_layer_mlp_for_last_position(model: Any) -> Iterator[None]:
    """During a prefill the last decoder layer's output matters at the last position only
    (its keys and values come from its input; the logits are kept for one position), so
    its MLP, the larger part of a layer, is computed there alone: 1/24 less work for the
    default model, the same last-position logits. Models laid out otherwise (no dense
    ``...MLP`` module there, e.g. a mixture of experts returning router logits) run whole."""
    layers = getattr(getattr(model, "model", None), "layers", None)
    last = layers[-1] if layers is not None and len(layers) else None
    mlp = getattr(last, "mlp", None)
    if mlp is None or not type(mlp).__name__.endswith("MLP"):
        yield
        return
    last.__dict__["mlp"] = _LastPositionOnly(mlp)  # shadows the submodule for this call
    try:
        yield
    finally:
        del last.__dict__["mlp"]


class HybridEngine(LlamaCppEngine):
    name = "hybrid"

    def __init__(
        self,
        model_path: str | Path,
        tokenizer: Any,
        prefill_model: str | Path | Any,
        *,
        min_prefill: int = DEFAULT_MIN_PREFILL,
        prefill_dtype: str = "bfloat16",
        **options: Any,
    ) -> None:
        super().__init__(model_path, tokenizer, **options)
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
            self._llama_prefill(sequence, ids)
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
    def _admit(self, request: Request) -> bool:
        if not super()._admit(request):
            return False
        if self.hybrid_prefill and len(request.todo) >= self.min_prefill:
            started = time.perf_counter()
            sequence: _Sequence = request.slot
            try:
                request.ready = self._prefill(sequence, request.todo)
            except Exception as err:  # noqa: BLE001 - llama.cpp computes the prompt itself instead
                log.warning("hybrid prefill failed, llama.cpp computes the prompt: %s", err)
                self._clear_cells(sequence)
                request.todo = list(request.prompt_ids)
                request.stats.reused_tokens = 0
                request.stats.computed_tokens = len(request.prompt_ids)
            else:
                request.todo = []
            request.stats.prefill_seconds += time.perf_counter() - started
        return True

    def _prefill(self, sequence: _Sequence, new_ids: list[int]) -> np.ndarray:
        """Compute ``new_ids`` after the sequence's cache in transformers, store the keys and
        values in llama.cpp, and return the next-token logits."""
        past = self._read(sequence) if sequence.ids else None
        keys, values, logits = self._hf_prefill(new_ids, past)
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
        return logits[: self.n_vocab]

    def _hf_prefill(self, ids: list[int], past: SeqState | None) -> tuple[list[Any], list[Any], np.ndarray]:
        """Keys and values, ``(1, heads, tokens, dim)`` per layer, of the cached prefix plus
        ``ids``, and the logits after the last of ``ids`` (float32)."""
        import torch
        from transformers import DynamicCache

        cache = DynamicCache(config=self._hf.config)
        if past is not None:
            dtype = next(self._hf.parameters()).dtype
            inverse = None if self._order is None else np.argsort(self._order)
            for layer, (k, v) in enumerate(zip(past.keys, past.values)):
                cache.update(self._tensor(k, inverse, dtype), self._tensor(v, None, dtype), layer)
        with torch.inference_mode(), _last_layer_mlp_for_last_position(self._hf):
            out = self._hf(
                input_ids=torch.tensor([ids]), past_key_values=cache, use_cache=True, logits_to_keep=1
            )
        layers = out.past_key_values.layers
        logits = out.logits[0, -1].float().numpy()
        return [layer.keys for layer in layers], [layer.values for layer in layers], logits

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
