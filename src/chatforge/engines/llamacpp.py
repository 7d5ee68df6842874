"""The llama.cpp engine: fast CPU inference on GGUF files through llama-cpp-python's C API.

Token ids in, token ids out, like every engine: chatforge's template renders the prompt
with the model's Hugging Face tokenizer, whose ids equal the GGUF vocabulary's.

One llama.cpp context holds ``n_parallel`` sequences, each with its own part of the KV
cache. Concurrent requests are decoded together through llama.cpp's batch API
(continuous batching, see :mod:`chatforge.engines.batching`), and a conversation's
:class:`KVState` stays bound to its sequence between turns, so turn N only computes the
tokens after the longest common prefix. When every sequence is taken, the one idle
longest is given to the newcomer.

On CPUs with AMX, llama.cpp's AMX matrix path (an "extra buffer type") crashes in builds
that drop its tile configuration; with a build that has the path, it is used once a child
process has decoded the model with it, and extra buffer types are turned off
(``use_extra_bufts=False``) where that failed or ``CHATFORGE_LLAMA_AMX=0`` says so
(:mod:`chatforge.engines.amx`). ``make install`` builds the path so that it works. The batch
thread runs llama.cpp only, never PyTorch.

Flash attention is off by default: on CPU it changed greedy output against plain
``llama_cpp.Llama`` (which it matches exactly without it) for a small speed gain.
"""

from __future__ import annotations

import ctypes
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from chatforge.engines.amx import extra_buffers_default, extra_buffers_note
from chatforge.engines.base import EngineError, KVState, common_prefix
from chatforge.engines.batching import BatchingEngine, Request, Work
from chatforge.engines.kvstate import SeqState, StateFormatError, read_state, write_state
from chatforge.engines.speculative import Speculation, load_draft, parse_speculation
from chatforge.llama_lib import (
    default_threads,
    import_llama_cpp,
    set_native_logs,
    take_native_errors,
    warn_if_openmp,
)
from chatforge.tokenizer import Tokenizer

log = logging.getLogger(__name__)

# A prompt takes its first tokens from another sequence's cache (and waits for a
# conversation whose prompt it shares to be computed first) when that saves this many.
MIN_SHARED_PREFIX = 16

@dataclass(eq=False)
class _Sequence:
    """One llama.cpp sequence: the ids its KV cache holds and the conversation it serves."""

    seq_id: int
    ids: list[int] = field(default_factory=list)
    owner: KVState | None = None
    busy: bool = False
    last_used: float = 0.0


class LlamaCppEngine(BatchingEngine):
    name = "llama.cpp"
    supports_speculation = True

    def __init__(
        self,
        model_path: str | Path,
        tokenizer: Tokenizer,
        *,
        context_length: int | None = None,
        n_parallel: int = 4,
        n_threads: int | None = None,
        n_batch: int = 512,
        flash_attn: bool = False,
        n_gpu_layers: int = 0,
        extra_buffers: bool | None = None,
        share_prefixes: bool = True,
        speculative: str | Speculation | None = None,
        verbose: bool = False,
    ) -> None:
        llama_cpp = import_llama_cpp()
        if verbose:
            set_native_logs("all")
        take_native_errors()  # older errors are not this load's
        self._lib = llama_cpp
        path = Path(model_path)
        if not path.is_file():
            raise FileNotFoundError(f"no GGUF file at {path}")
        with path.open("rb") as f:
            if f.read(4) != b"GGUF":  # said before the AMX check below tries to decode it
                raise EngineError(f"{path} is not a GGUF model file")
        started = time.perf_counter()
        llama_cpp.llama_backend_init()
        warn_if_openmp()
        mparams = llama_cpp.llama_model_default_params()
        mparams.n_gpu_layers = n_gpu_layers
        mparams.use_extra_bufts = extra_buffers_default(path) if extra_buffers is None else extra_buffers
        self._model = llama_cpp.llama_model_load_from_file(str(path).encode(), mparams)
        if not self._model:
            raise EngineError(f"llama.cpp could not load {path} (is it a GGUF model file?){_why()}")
        trained = int(llama_cpp.llama_model_n_ctx_train(self._model))
        per_sequence = min(context_length or min(trained, 8192), trained)
        threads = n_threads or default_threads()
        cparams = llama_cpp.llama_context_default_params()
        cparams.n_ctx = per_sequence * n_parallel
        cparams.n_batch = n_batch
        cparams.n_ubatch = n_batch
        cparams.n_seq_max = n_parallel
        cparams.n_threads = threads
        cparams.n_threads_batch = threads
        cparams.kv_unified = False  # each sequence its own cache: a step attends to its own tokens only
        cparams.no_perf = True
        cparams.flash_attn_type = (
            llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
            if flash_attn
            else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
        )
        self._ctx = llama_cpp.llama_init_from_model(self._model, cparams)
        if not self._ctx:
            llama_cpp.llama_model_free(self._model)
            raise EngineError(
                f"llama.cpp could not create a context of {cparams.n_ctx} tokens for {path}{_why()}"
            )
        self._memory = llama_cpp.llama_get_memory(self._ctx)
        vocab = llama_cpp.llama_model_get_vocab(self._model)
        self.n_vocab = int(llama_cpp.llama_vocab_n_tokens(vocab))
        self._batch = llama_cpp.llama_batch_init(n_batch, 0, 1)
        self._sequences = [_Sequence(i) for i in range(n_parallel)]
        self.model_path = path
        self.n_threads = threads
        self.extra_buffers = bool(mparams.use_extra_bufts)  # llama.cpp's AMX path (repacked weights)
        self.share_prefixes = share_prefixes
        self.shared_tokens = 0  # prompt tokens taken from other sequences' caches so far
        self.move_caches = True  # keep busy sequences side by side (see _place)
        self.moved_caches = 0  # caches moved for that so far
        super().__init__(tokenizer, per_sequence, max_batch=n_parallel, max_step_tokens=n_batch)
        self.speculation = parse_speculation(speculative)
        if self.speculation.mode == "draft":
            try:
                self.draft_model = load_draft(
                    LlamaCppEngine, self, self.speculation.draft_model, n_batch=n_batch, extra_buffers=extra_buffers
                )
            except BaseException:
                self.close()
                raise
        log.info(
            "llama.cpp loaded %s in %.1f s: %d sequences x %d tokens, %d threads, flash attention %s%s",
            path.name,
            time.perf_counter() - started,
            n_parallel,
            per_sequence,
            threads,
            "on" if flash_attn else "off",
            extra_buffers_note(mparams.use_extra_bufts, asked=extra_buffers is not None),
        )

    # -- batching hooks --------------------------------------------------------------
    def _admit(self, request: Request) -> bool:
        state = request.state
        prompt = request.prompt_ids
        sequence = self._bound(state)
        if self._waits_for_shared_prompt(request, sequence):
            return False
        if sequence is None:
            sequence = self._free_sequence(prompt)
            if sequence is None:
                return False
            if sequence.owner is not None:  # the conversation idle longest gives its cache up
                sequence.owner.ids, sequence.owner.cache = [], None
            sequence.owner = state  # the cells stay: the prompt may start as they do
        sequence = self._place(sequence)
        if state is not None:
            state.cache = (id(self), sequence.seq_id)
        if self._recomputes(request):
            self._truncate(sequence, 0)
        else:
            # At least one prompt token is computed, to have logits for the next token.
            self._truncate(sequence, max(self._shared_length(sequence.ids, prompt), 0))
            self._borrow_prefix(sequence, prompt[: len(prompt) - 1])
        reuse = len(sequence.ids)
        sequence.busy = True
        request.slot = sequence
        request.todo = request.prompt_ids[reuse:]
        request.stats.reused_tokens = reuse
        request.stats.computed_tokens = len(request.prompt_ids) - reuse
        return True

    def _bound(self, state: KVState | None) -> _Sequence | None:
        if state is None or not isinstance(state.cache, tuple) or state.cache[0] != id(self):
            return None
        sequence = self._sequences[state.cache[1]]
        if sequence.owner is not state or sequence.busy:
            return None
        return sequence

    def _free_sequence(self, prompt: list[int]) -> _Sequence | None:
        idle = [s for s in self._sequences if not s.busy]
        if not idle:
            return None
        unowned = [s for s in idle if s.owner is None]
        if unowned:  # the one whose cache starts most like the prompt
            return max(unowned, key=lambda s: (common_prefix(s.ids, prompt), -s.last_used))
        # Else the conversation idle longest gives its sequence up (and recomputes later).
        return min(idle, key=lambda s: s.last_used)

    # -- prompts that start alike share their cached prefix ----------------------------
    @staticmethod
    def _shared_length(ids: list[int], prompt: list[int]) -> int:
        return min(common_prefix(ids, prompt), len(prompt) - 1)

    @staticmethod
    def _recomputes(request: Request) -> bool:
        """A seeded request outside a conversation computes its whole prompt, so that asking
        again gives the same tokens: a token's logits computed alone and within a batch
        differ in the last bits, enough to change a sampled choice."""
        return request.state is None and request.params.seed is not None

    def _waits_for_shared_prompt(self, request: Request, own: _Sequence | None) -> bool:
        """Whether an admitted request whose prompt starts like this one is still computing
        it: this one then waits a step and takes that prefix instead of computing it too."""
        if not self.share_prefixes or self._recomputes(request):
            return False
        prompt = request.prompt_ids
        # What it can have at once: its own cache's prefix, or the best other sequence's.
        have = max(self._shared_length(s.ids, prompt) for s in self._sequences)
        if own is not None:
            have = max(have, self._shared_length(own.ids, prompt))
        for other in self._active:
            sequence = other.slot
            if other is request or other.finished or sequence is None:
                continue
            computing = len(sequence.ids) < len(other.prompt_ids)
            if computing and self._shared_length(other.prompt_ids, prompt) >= have + MIN_SHARED_PREFIX:
                return True
        return False

    def _borrow_prefix(self, sequence: _Sequence, prompt: list[int]) -> None:
        """Copy the longest prefix of ``prompt`` another sequence holds into ``sequence``."""
        if not self.share_prefixes:
            return
        donor, length = None, len(sequence.ids) + MIN_SHARED_PREFIX - 1
        for other in self._sequences:
            if other is not sequence and other.ids:
                n = common_prefix(other.ids, prompt)
                if n > length:
                    donor, length = other, n
        if donor is None:
            return
        try:
            part = self._retarget(self._read(donor), sequence.seq_id, length)
            self._clear_cells(sequence)
            self._write(sequence, part)
        except Exception as err:  # noqa: BLE001 - the prompt is computed instead
            log.warning("prompts no longer share cached prefixes: %s", err)
            self.share_prefixes = False
            self._clear_cells(sequence)
            return
        sequence.ids = donor.ids[:length]
        self.shared_tokens += length

    @staticmethod
    def _retarget(state: SeqState, seq_id: int, length: int | None = None) -> SeqState:
        """``state``'s first ``length`` cells (all by default) for sequence ``seq_id``."""
        cut = slice(0, state.n_cells if length is None else length)
        return SeqState(
            seq_id=seq_id,
            n_stream=state.n_stream,
            stream=seq_id if state.n_stream > 1 else 0,
            positions=state.positions[cut],
            keys=[k[cut] for k in state.keys],
            values=[v[cut] for v in state.values],
            v_trans=state.v_trans,
            k_type=state.k_type,
            v_type=state.v_type,
        )

    # -- busy sequences stay side by side ----------------------------------------------
    # With a cache per sequence, llama.cpp computes a step in one pass only over sequences
    # with consecutive ids; busy sequences 0, 5, 10 and 15 take four passes (one per
    # token), which made four streams decode at 48 instead of 80 tokens/s. A request is
    # therefore placed next to the busy ones when admitted, before its prompt fills its
    # cache (the idle cache that was there moves to where it came from), and before each
    # step a gap left by a finished request is closed by moving the last sequence into it.
    def _place(self, sequence: _Sequence) -> _Sequence:
        busy = sorted(s.seq_id for s in self._sequences if s.busy and s is not sequence)
        if not busy or not self.move_caches:
            return sequence
        lo, hi = busy[0], busy[-1]
        fits = {i for i in range(lo, hi + 1)} - set(busy) | {lo - 1, hi + 1}
        fits &= set(range(len(self._sequences)))
        if sequence.seq_id in fits:
            return sequence
        # The spot whose cache is cheapest to displace: empty, then unowned, then idle longest.
        spots = [self._sequences[i] for i in sorted(fits)]
        spot = min(spots, key=lambda s: (bool(s.ids), s.owner is not None, s.last_used))
        return self._swap(sequence, spot)

    def _close_gaps(self, work: list[Work]) -> None:
        """Move the step's sequences next to each other (a request that finished or left
        in between leaves a gap)."""
        stepping = {id(item.request.slot) for item in work}
        while self.move_caches:
            ours = [s for s in self._sequences if id(s) in stepping]
            lo, hi = ours[0].seq_id, ours[-1].seq_id
            if hi - lo + 1 == len(ours):
                return
            gap = next(i for i in range(lo, hi) if id(self._sequences[i]) not in stepping)
            self._swap(ours[-1], self._sequences[gap])

    def _swap(self, sequence: _Sequence, spot: _Sequence) -> _Sequence:
        """Exchange two sequences' caches in llama.cpp; ``sequence`` (its ids, owner and
        request) then lives at ``spot``'s id and the other at its old one. Returns it."""
        try:
            moving = self._read(sequence) if sequence.ids else None
            staying = self._read(spot) if spot.ids else None
            self._lib.llama_memory_seq_rm(self._memory, sequence.seq_id, -1, -1)
            self._lib.llama_memory_seq_rm(self._memory, spot.seq_id, -1, -1)
            if moving is not None:
                self._write(spot, self._retarget(moving, spot.seq_id))
            if staying is not None:
                self._write(sequence, self._retarget(staying, sequence.seq_id))
        except Exception as err:  # noqa: BLE001 - both caches are dropped, nothing wrong is kept
            log.warning("caches stay where they are: moving one between sequences failed: %s", err)
            self.move_caches = False
            for one in (sequence, spot):
                self._clear(one)
                for request in self._active:  # a running request lost its cache: it ends
                    if request.slot is one:
                        request.finish(EngineError(f"its cache could not be moved: {err}"))
            return sequence
        sequence.seq_id, spot.seq_id = spot.seq_id, sequence.seq_id
        self._sequences.sort(key=lambda s: s.seq_id)
        for one in (sequence, spot):
            if one.owner is not None and isinstance(one.owner.cache, tuple):
                one.owner.cache = (id(self), one.seq_id)
        self.moved_caches += 1
        return sequence

    def _read(self, sequence: _Sequence) -> SeqState:
        """The sequence's cache, through llama.cpp's state API (:mod:`chatforge.engines.kvstate`)."""
        lib = self._lib
        size = lib.llama_state_seq_get_size(self._ctx, sequence.seq_id)
        buffer = (ctypes.c_uint8 * size)()
        got = lib.llama_state_seq_get_data(self._ctx, buffer, size, sequence.seq_id)
        state = read_state(bytes(memoryview(buffer)[:got]))
        if not np.array_equal(state.positions, np.arange(len(sequence.ids))):
            raise StateFormatError("the cached positions are not 0..n-1")
        return state

    def _write(self, sequence: _Sequence, state: SeqState) -> None:
        data = write_state(state)
        buffer = (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
        if self._lib.llama_state_seq_set_data(self._ctx, buffer, len(data), sequence.seq_id) != len(data):
            raise EngineError("llama.cpp did not take the cache written to it")

    def _clear_cells(self, sequence: _Sequence) -> None:
        self._lib.llama_memory_seq_rm(self._memory, sequence.seq_id, -1, -1)
        sequence.ids = []

    def _clear(self, sequence: _Sequence) -> None:
        if sequence.owner is not None:
            sequence.owner.ids, sequence.owner.cache = [], None
        self._lib.llama_memory_seq_rm(self._memory, sequence.seq_id, -1, -1)
        sequence.ids, sequence.owner = [], None

    def _truncate(self, sequence: _Sequence, keep: int) -> None:
        if keep < len(sequence.ids):
            if not self._lib.llama_memory_seq_rm(self._memory, sequence.seq_id, keep, -1):
                self._lib.llama_memory_seq_rm(self._memory, sequence.seq_id, -1, -1)
                keep = 0
            sequence.ids = sequence.ids[:keep]

    def _forward(self, work: list[Work]) -> list[np.ndarray | None]:
        self._close_gaps(work)
        if any(item.request.finished for item in work):  # a failed move ended a request
            live = [item for item in work if not item.request.finished]
            rows = iter(self._forward(live) if live else [])
            return [None if item.request.finished else next(rows) for item in work]
        batch = self._batch
        n = 0
        outputs = 0
        wanted: dict[int, int] = {}  # position in ``work`` -> its first logits row
        # In ascending sequence order: with a cache per sequence, llama.cpp decodes four
        # sequences given as 1, 2, 3, 0 about a quarter slower than given as 0, 1, 2, 3.
        order = sorted(range(len(work)), key=lambda i: work[i].request.slot.seq_id)
        for position in order:
            item = work[position]
            sequence: _Sequence = item.request.slot
            start = len(sequence.ids)
            for j, token in enumerate(item.ids):
                batch.token[n] = token
                batch.pos[n] = start + j
                batch.n_seq_id[n] = 1
                batch.seq_id[n][0] = sequence.seq_id
                batch.logits[n] = 0
                n += 1
            if item.logits:  # the last position's, and each draft position's before it
                for row in range(n - 1 - item.draft, n):
                    batch.logits[row] = 1
                wanted[position] = outputs
                outputs += item.draft + 1
        batch.n_tokens = n
        status = self._lib.llama_decode(self._ctx, batch)
        if status != 0:
            # The cache is restored on these codes; nothing of this step is kept.
            raise EngineError(
                f"llama.cpp decode failed with status {status}"
                + (" (no room left in the KV cache)" if status == 1 else "")
                + _why()
            )
        for item in work:
            item.request.slot.ids.extend(item.ids)
        if not wanted:
            return [None] * len(work)
        # All rows with one call, as views: the worker samples from them before the next
        # decode overwrites them (a copy of each 150k-entry row cost more than its argmax).
        logits = np.ctypeslib.as_array(self._lib.llama_get_logits(self._ctx), shape=(outputs, self.n_vocab))
        # One row per item, or a draft's rows (its fed token's and each draft token's).
        return [
            None
            if (first := wanted.get(i)) is None
            else (logits[first : first + item.draft + 1] if item.draft else logits[first])
            for i, item in enumerate(work)
        ]

    def _rollback(self, request: Request, count: int) -> None:
        sequence: _Sequence = request.slot
        keep = len(sequence.ids) - count
        self._truncate(sequence, keep)
        if len(sequence.ids) != keep:  # llama.cpp could not cut the sequence: it lost its cache
            request.finish(EngineError("llama.cpp could not drop a rejected draft from the cache"))
            log.warning("speculative decoding is off: llama.cpp could not drop a rejected draft")
            self.speculation = Speculation("off")

    def _release(self, request: Request, keep: int) -> None:
        sequence: _Sequence | None = request.slot
        if sequence is None:
            return
        sequence.busy = False
        sequence.last_used = time.monotonic()
        state = request.state
        self._truncate(sequence, min(keep, len(sequence.ids)))
        if state is None or sequence.owner is not state:
            # No conversation keeps it: an unowned cache, for prompts that start the same way.
            if sequence.owner is not None:
                self._clear(sequence)
        else:
            state.ids = list(sequence.ids)
            state.cache = (id(self), sequence.seq_id)

    # -- lifetime ----------------------------------------------------------------------
    def close(self) -> None:
        super().close()
        lib = self._lib
        if getattr(self, "_ctx", None):
            lib.llama_batch_free(self._batch)
            lib.llama_free(self._ctx)
            self._ctx = None
        if getattr(self, "_model", None):
            lib.llama_model_free(self._model)
            self._model = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    # -- tokenizer checks ------------------------------------------------------------------
    def tokenize(self, text: str, special: bool = True) -> list[int]:
        """The GGUF vocabulary's own tokenization (to check it agrees with the HF tokenizer)."""
        lib = self._lib
        vocab = lib.llama_model_get_vocab(self._model)
        data = text.encode()
        size = len(data) + 8
        out = (lib.llama_token * size)()
        n = lib.llama_tokenize(vocab, data, len(data), out, size, False, special)
        if n < 0:
            raise EngineError(f"llama.cpp tokenize needs {-n} slots")
        return list(out[:n])

    def piece(self, token: int) -> bytes:
        lib = self._lib
        vocab = lib.llama_model_get_vocab(self._model)
        buf = ctypes.create_string_buffer(256)
        n = lib.llama_token_to_piece(vocab, token, buf, len(buf), 0, True)
        return buf.raw[: max(n, 0)]


def _why() -> str:
    """llama.cpp's own error lines, for an exception's text: with its log hidden (``chatforge
    chat``) they are the only place the reason shows."""
    errors = take_native_errors()
    return f": {errors}" if errors else ""
