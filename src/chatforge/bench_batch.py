"""The reference for concurrent streams: plain llama.cpp's batch API, without chatforge.

What a program of its own would do to answer n prompts at once with llama.cpp: one context
with a KV cache per sequence, every prompt computed in one batch (chunked to the batch
size), then one token per sequence per step, greedy, until each has its tokens. No server,
no streaming, no sampling beyond argmax: the ceiling the HTTP server's figures compare to.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np


class PlainLlamaBatch:
    name = "plain llama.cpp batch API (no server)"

    def __init__(self, path: Path, threads: int | None, n_seq: int, n_ctx_per_seq: int = 4096) -> None:
        import llama_cpp

        from chatforge.engines.llamacpp import default_threads, extra_buffers_default

        self.lib = lib = llama_cpp
        lib.llama_backend_init()
        params = lib.llama_model_default_params()
        params.use_extra_bufts = extra_buffers_default()  # the AMX crash (docs/engines.md)
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

    def run(self, prompts: list[list[int]], tokens: int) -> dict[str, Any]:
        """Answer ``prompts`` together, ``tokens`` new tokens each; the same figures as
        :func:`chatforge.bench.run_streams` (every stream ends with the last step)."""
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
        }

    def close(self) -> None:
        if self.ctx:
            self.lib.llama_batch_free(self.batch)
            self.lib.llama_free(self.ctx)
            self.lib.llama_model_free(self.model)
            self.ctx = self.model = None
