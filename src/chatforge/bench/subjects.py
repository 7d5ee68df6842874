"""What ``chatforge bench`` measures: chatforge's engines and the raw references.

* :class:`EngineSubject`: a chatforge engine, through ``Engine.stream``;
* :class:`RawTransformers`: plain ``transformers`` ``generate`` on the same weights;
* :class:`RawLlamaCpp`: plain ``llama_cpp.Llama`` on the same GGUF;
* :class:`PlainLlamaBatch`, the concurrent streams' reference: plain llama.cpp's batch API,
  what a program of its own would do to answer n prompts at once with llama.cpp (one
  context with a KV cache per sequence, every prompt computed in one batch, chunked to the
  batch size, then one token per sequence per step, greedy, until each has its tokens). No
  server, no streaming, no sampling beyond argmax: the ceiling the HTTP server's figures
  compare to.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from chatforge.engines import amx
from chatforge.engines.amx import on_llama_thread
from chatforge.engines.base import SamplingParams
from chatforge.llama_lib import default_threads


class Subject:
    """Something that can generate: a chatforge engine or a raw reference."""

    name: str

    def decode(self, ids: list[int], n: int) -> tuple[float, float]:
        """(TTFT seconds, decode tokens/s) generating exactly ``n`` tokens greedily."""
        raise NotImplementedError

    def prefill(self, ids: list[int]) -> float:
        """Seconds to process ``ids`` and produce the first token."""
        raise NotImplementedError


def uncached(max_new_tokens: int) -> Any:
    """Greedy parameters for a request that computes its whole prompt: a seeded request
    outside a conversation takes nothing from the engines' prefix caches (see
    ``LlamaCppEngine._recomputes``), so repeated runs of one prompt measure the same work."""
    return SamplingParams(do_sample=False, max_new_tokens=max_new_tokens, seed=0)


class EngineSubject(Subject):
    def __init__(self, model: Any) -> None:
        self.model = model
        self.engine = model.engine
        self.name = f"chatforge {self.engine.name}"

    def decode(self, ids: list[int], n: int) -> tuple[float, float]:
        chunks = list(self.engine.stream(ids, uncached(n)))
        stats = chunks[-1].stats
        return stats.time_to_first_token or 0.0, stats.decode_tokens_per_second

    def prefill(self, ids: list[int]) -> float:
        chunks = list(self.engine.stream(ids, uncached(1)))
        return chunks[-1].stats.time_to_first_token or 0.0


class RawTransformers(Subject):
    def __init__(self, model: Any) -> None:
        import torch

        self.torch = torch
        self.model = model
        self.name = (
            f"plain transformers generate ({str(next(model.parameters()).dtype).removeprefix('torch.')})"
        )

    def decode(self, ids: list[int], n: int) -> tuple[float, float]:
        torch = self.torch
        with torch.inference_mode():
            inputs = torch.tensor([ids])
            started = time.perf_counter()
            self.model.generate(inputs, max_new_tokens=1, do_sample=False, pad_token_id=0)
            ttft = time.perf_counter() - started
            started = time.perf_counter()
            out = self.model.generate(
                inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0
            )
            total = time.perf_counter() - started
        made = out.shape[1] - len(ids)
        return ttft, (made - 1) / max(total - ttft, 1e-9)

    def prefill(self, ids: list[int]) -> float:
        torch = self.torch
        with torch.inference_mode():
            started = time.perf_counter()
            self.model(input_ids=torch.tensor([ids]), logits_to_keep=1)
            return time.perf_counter() - started


class RawLlamaCpp(Subject):
    def __init__(self, path: Path, threads: int | None, n_ctx: int = 4096) -> None:
        import llama_cpp
        import llama_cpp.llama_cpp as low

        threads = threads or default_threads()
        # The AMX path where the engine uses it, no more (a build whose path crashes would
        # end the bench); Llama() has no argument for it, so its default parameters say it.
        extra = amx.extra_buffers_default(path)
        shipped = low.llama_model_default_params

        def model_params() -> Any:
            params = shipped()
            params.use_extra_bufts = extra
            return params

        low.llama_model_default_params = model_params
        try:
            self.llm = llama_cpp.Llama(
                str(path), n_ctx=n_ctx, n_batch=512, n_threads=threads, n_threads_batch=threads, verbose=False
            )
        finally:
            low.llama_model_default_params = shipped
        self.name = "plain llama_cpp.Llama"

    @on_llama_thread  # never a thread PyTorch runs in (engines/amx.py)
    def decode(self, ids: list[int], n: int) -> tuple[float, float]:
        self.llm.reset()
        started = time.perf_counter()
        ttft = 0.0
        made = 0
        for _ in self.llm.generate(ids, temp=0.0, top_k=1, reset=True):
            made += 1
            if made == 1:
                ttft = time.perf_counter() - started
            if made == n:
                break
        total = time.perf_counter() - started
        return ttft, (made - 1) / max(total - ttft, 1e-9)

    @on_llama_thread  # never a thread PyTorch runs in (engines/amx.py)
    def prefill(self, ids: list[int]) -> float:
        self.llm.reset()
        started = time.perf_counter()
        self.llm.eval(ids)
        return time.perf_counter() - started


class PlainLlamaBatch:
    name = "plain llama.cpp batch API (no server)"

    def __init__(
        self,
        path: Path,
        threads: int | None,
        n_seq: int,
        n_ctx_per_seq: int = 4096,
        extra_buffers: bool | None = None,
    ) -> None:
        import llama_cpp

        self.lib = lib = llama_cpp
        lib.llama_backend_init()
        params = lib.llama_model_default_params()
        # AMX only where it works (engines/amx.py), as the engine does, unless told.
        params.use_extra_bufts = amx.extra_buffers_default(path) if extra_buffers is None else extra_buffers
        self.extra_buffers = bool(params.use_extra_bufts)
        self.model = lib.llama_model_load_from_file(str(path).encode(), params)
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load {path}")
        threads = threads or default_threads()
        cparams = lib.llama_context_default_params()
        cparams.n_ctx = n_ctx_per_seq * n_seq
        cparams.n_batch = cparams.n_ubatch = 512
        cparams.n_seq_max = n_seq
        cparams.n_threads = cparams.n_threads_batch = threads
        cparams.no_perf = True
        self.ctx = lib.llama_init_from_model(self.model, cparams)
        if not self.ctx:
            raise RuntimeError("llama.cpp could not create the reference's context")
        self.memory = lib.llama_get_memory(self.ctx)
        self.n_seq = n_seq
        self.n_batch = 512
        self.batch = lib.llama_batch_init(self.n_batch, 0, 1)
        self.n_vocab = int(lib.llama_vocab_n_tokens(lib.llama_model_get_vocab(self.model)))
        self.outputs: list[list[int]] = []

    def _decode(self, items: list[tuple[int, int, int, bool]]) -> dict[int, int]:
        """Run ``(sequence, position, token, wants_logits)`` items, n_batch at a time; the
        next-token choice (argmax) of each item that wants logits, by sequence."""
        lib, batch = self.lib, self.batch
        chosen: dict[int, int] = {}
        for start in range(0, len(items), self.n_batch):
            part = items[start : start + self.n_batch]
            for n, (seq, pos, token, logits) in enumerate(part):
                batch.token[n], batch.pos[n], batch.n_seq_id[n] = token, pos, 1
                batch.seq_id[n][0], batch.logits[n] = seq, int(logits)
            batch.n_tokens = len(part)
            if lib.llama_decode(self.ctx, batch) != 0:
                raise RuntimeError("llama_decode failed in the reference")
            for n, (seq, _, _, logits) in enumerate(part):
                if logits:
                    row = np.ctypeslib.as_array(lib.llama_get_logits_ith(self.ctx, n), shape=(self.n_vocab,))
                    chosen[seq] = int(row.argmax())
        return chosen

    @on_llama_thread  # never a thread PyTorch runs in (engines/amx.py)
    def run(self, prompts: list[list[int]], tokens: int) -> dict[str, Any]:
        """Answer ``prompts`` together, ``tokens`` new tokens each; the same figures as
        :func:`chatforge.bench.client.run_streams` (every stream ends with the last step)."""
        if len(prompts) > self.n_seq:
            raise ValueError(f"{len(prompts)} prompts for {self.n_seq} sequences")
        self.lib.llama_memory_clear(self.memory, True)
        started = time.perf_counter()
        items = [
            (seq, pos, token, pos == len(ids) - 1)
            for seq, ids in enumerate(prompts)
            for pos, token in enumerate(ids)
        ]
        nxt = self._decode(items)
        first = time.perf_counter() - started  # every prompt's first token comes with this pass
        self.outputs = [[nxt[seq]] for seq in range(len(prompts))]  # the tokens made, per prompt
        for made in range(1, tokens):
            steps = [(seq, len(prompts[seq]) + made - 1, nxt[seq], True) for seq in range(len(prompts))]
            nxt = self._decode(steps)
            for seq, out in enumerate(self.outputs):
                out.append(nxt[seq])
        wall = time.perf_counter() - started
        return {
            "streams": len(prompts),
            "tokens": tokens * len(prompts),
            "wall_s": wall,
            "aggregate_tps": tokens * len(prompts) / wall,
            "p50_s": wall,
            "p95_s": wall,
            "ttft_p50_s": first,
            "ttft_p95_s": first,
        }

    def close(self) -> None:
        if self.ctx:
            self.lib.llama_batch_free(self.batch)
            self.lib.llama_free(self.ctx)
            self.lib.llama_model_free(self.model)
            self.ctx = self.model = None
