"""Continuous batching: concurrent requests decoded together, joining and leaving the batch.

One worker thread owns the model. A caller's ``generate_ids`` submits a :class:`Request`
and reads its tokens from a queue. Each step the worker

1. lets go of requests whose reader stopped (stop string, budget, cancel, error) and
   records what their KV cache holds in their :class:`KVState`;
2. admits waiting requests while there is room, reusing each conversation's cached
   prefix (the subclass decides where a conversation's cache lives); an idle worker
   first waits a few milliseconds for requests sent together (``batch_wait``);
3. runs one forward pass over the batch: one token for every decoding request, plus a
   chunk of each new prompt (chunked prefill, so a long prompt never stalls the others);
4. samples each request's next token, then hands the step's tokens to their readers together.

Subclasses implement ``_admit``, ``_forward`` and ``_release``. A request's cache ends up
exactly as a one-at-a-time engine would leave it: the prompt plus every consumed token but
the last, whatever the worker computed ahead.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from abc import abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from chatforge.constrain.grammars import GrammarError
from chatforge.constrain.matcher import Constraint, grammar_tokenizer
from chatforge.engines.base import Engine, EngineError, GenerationStats, KVState, SamplingParams
from chatforge.engines.sampling import apply_penalties, sample
from chatforge.engines.speculative import DraftModel, Payoff, Speculation, SpeculativeSteps, Speculator
from chatforge.tokenizer import Tokenizer

log = logging.getLogger(__name__)

_END = object()
# How much probability mass the candidates kept for top-p sampling must hold for the
# shortcut to be exact (see TokenSampler).
_CANDIDATES = 1024
_IDLE_EXIT = 10.0  # seconds a worker thread waits for work before it ends
# An idle worker that gets a request waits until none has arrived for this long (at most
# BATCH_WAIT_LIMIT times as long) before its first step, so that requests sent together
# share their first forward pass: started at once, the first prompt's pass runs alone and
# the others wait for it. Four requests sent together through the HTTP server (default
# model, two cores) got their last first token after 713 ms without the wait and 509 ms
# with it, and made 6% more tokens/s (benchmarks/batch_wait.py, docs/benchmarks.md).
# They came in up to 8 ms from first to last, with gaps of up to 4 ms, and reached the
# engine 1.5-3 ms later each, once their prompts were rendered. The server announces each
# request as it comes in (expect_request), so the gaps that count are those between their
# arrivals at the server. A request alone pays the wait once.
BATCH_WAIT = 0.005
BATCH_WAIT_LIMIT = 6


class TokenSampler:
    """One request's next-token choice from a row of logits, with its penalties, seed and
    grammar (a token the grammar forbids is picked again among the allowed ones, see
    :mod:`chatforge.constrain.matcher`)."""

    def __init__(
        self, params: SamplingParams, prompt_ids: list[int], constraint: Constraint | None = None
    ) -> None:
        self.params = params
        self.constraint = constraint
        self.generator = torch.Generator().manual_seed(params.seed) if params.seed is not None else None
        self.penalised = (
            params.repetition_penalty != 1.0 or params.presence_penalty != 0 or params.frequency_penalty != 0
        )
        self.seen = list(prompt_ids)
        self.counts: dict[int, int] = {}

    def __call__(self, logits: np.ndarray) -> int:
        token = self._choose(logits)
        if self.constraint is None or self.constraint.allows(token):
            return token
        return self._choose(self.constraint.restrict(logits))

    def _choose(self, logits: np.ndarray) -> int:
        if self.params.greedy and not self.penalised:
            best = int(logits.argmax())
            if np.isfinite(logits[best]):
                return best
        row = torch.from_numpy(np.array(logits, dtype=np.float32, copy=True)).unsqueeze(0)
        if self.penalised:
            counts = None
            if self.counts:
                counts = torch.zeros_like(row)
                index = torch.tensor(list(self.counts), dtype=torch.long)
                counts[0, index] = torch.tensor(list(self.counts.values()), dtype=torch.float32)
            seen = torch.tensor([self.seen], dtype=torch.long)
            row = apply_penalties(row, seen, counts, self.params)
        return self._sample(row)

    def _sample(self, row: torch.Tensor) -> int:
        params = self.params
        if params.greedy or params.top_k or params.top_p >= 1.0 or row.shape[-1] <= _CANDIDATES:
            return int(sample(row, params, self.generator)[0])
        # Top-p over a 150k vocabulary sorts it all at every step. The nucleus nearly always
        # lies within the best few hundred tokens: when the top candidates already hold
        # top_p of the probability, sampling among them is exactly the same distribution.
        scaled = row / max(params.temperature, 1e-5)
        values, index = torch.topk(scaled, _CANDIDATES, dim=-1)
        mass = torch.exp(values - torch.logsumexp(scaled, dim=-1, keepdim=True)).sum()
        if not torch.isfinite(values).all() or float(mass) < params.top_p:
            return int(sample(row, params, self.generator)[0])
        return int(index[0, int(sample(values * max(params.temperature, 1e-5), params, self.generator)[0])])

    def observe(self, token: int) -> None:
        if self.constraint is not None:
            self.constraint.consume(token)
        if self.penalised:
            self.seen.append(token)
            self.counts[token] = self.counts.get(token, 0) + 1


@dataclass(eq=False)
class Request:
    """One generation in flight, shared by its reader and the worker."""

    prompt_ids: list[int]
    params: SamplingParams
    stats: GenerationStats
    state: KVState | None
    cancel: threading.Event | None
    budget: int
    sampler: TokenSampler
    tokens: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)
    released: threading.Event = field(default_factory=threading.Event)
    todo: list[int] = field(default_factory=list)  # ids to run through the model next
    ready: np.ndarray | None = None  # next-token logits the subclass computed at admission
    generated: list[int] = field(default_factory=list)
    slot: Any = None  # where the subclass keeps this request's cache
    speculator: Speculator | None = None  # its drafting, when speculative decoding is on
    consumed: int = 0  # tokens the reader has taken
    closed: bool = False  # the reader went away
    finished: bool = False  # no more tokens will be made
    started: float = 0.0

    @property
    def decoding(self) -> bool:
        return not self.finished and (bool(self.todo) or self.ready is not None)

    def finish(self, error: BaseException | None = None) -> None:
        if not self.finished:
            self.finished = True
            self.tokens.put(error if error is not None else _END)


@dataclass
class Work:
    """What one request contributes to a step: ids to feed and whether its logits are wanted."""

    request: Request
    ids: list[int]
    logits: bool
    draft: int = 0  # the last ``draft`` ids are guesses: logits are wanted for each of them too


class BatchingEngine(SpeculativeSteps, Engine):
    """An engine whose requests share forward passes through one worker thread."""

    supports_grammar = True
    supports_speculation = False  # whether _forward returns the rows of a draft's positions

    def __init__(
        self, tokenizer: Tokenizer, context_length: int, max_batch: int, max_step_tokens: int
    ) -> None:
        super().__init__(tokenizer, context_length)
        self.max_batch = max_batch
        self.max_step_tokens = max_step_tokens
        self._cond = threading.Condition()
        self._waiting: list[Request] = []
        self._active: list[Request] = []
        self._stopping = False
        self._worker: threading.Thread | None = None
        self._last_arrival = 0.0  # time.perf_counter() of the latest submitted request
        self.batch_wait = BATCH_WAIT
        self.speculation = Speculation("off")
        self.draft_model: DraftModel | None = None
        self.drafted_tokens = 0  # over every request so far (speculative decoding)
        self.accepted_tokens = 0
        self.payoff = Payoff()

    # -- the caller's side -------------------------------------------------------
    def generate_ids(
        self,
        prompt_ids: list[int],
        params: SamplingParams,
        stats: GenerationStats,
        state: KVState | None = None,
        cancel: threading.Event | None = None,
    ) -> Iterator[int]:
        budget = max(1, min(params.max_new_tokens, self.context_length - len(prompt_ids)))
        sampler = TokenSampler(params, prompt_ids, self._constraint(params))
        request = Request(list(prompt_ids), params, stats, state, cancel, budget, sampler)
        if self.speculation.on and self.supports_speculation:
            request.speculator = Speculator(request.prompt_ids)
            if self.draft_model is not None:  # its cache of the context stays with the conversation
                if state is not None:
                    state.draft = state.draft or KVState()
                request.speculator.draft_state = state.draft if state is not None else KVState()
        self.submit_all([request])
        yield from self._stream(request)

    def _stream(self, request: Request) -> Iterator[int]:
        """The request's tokens as the worker makes them; the request's cache is released
        (the worker lets it go) before this ends, however it ends."""
        try:
            while True:
                item = request.tokens.get()
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                request.consumed += 1
                yield item
        finally:
            with self._cond:
                request.closed = True
                self._cond.notify_all()
            request.released.wait()

    def decode_together(
        self,
        contexts: list[tuple[list[int], KVState | None]],
        lengths: list[int],
        sampler: Callable[[], Any],
        stop_token_ids: list[int],
    ) -> list[list[int]]:
        """Up to ``lengths`` tokens after each context, its requests submitted together so
        that they share steps, each picked by a new ``sampler()`` (a draft model's drafts)."""
        requests: list[Request | None] = []
        for (ids, state), length in zip(contexts, lengths):
            budget = min(length, self.context_length - len(ids))
            if budget <= 0:
                requests.append(None)
                continue
            params = SamplingParams(max_new_tokens=budget, do_sample=False, stop_token_ids=stop_token_ids)
            requests.append(Request(list(ids), params, GenerationStats(), state, None, budget, sampler()))
        self.submit_all([r for r in requests if r is not None])
        return [[] if r is None else list(self._stream(r)) for r in requests]

    def _constraint(self, params: SamplingParams) -> Constraint | None:
        """The request's grammar state, made in the caller's thread (llguidance's view of the
        tokenizer takes a second the first time). A grammar that fails here, when the
        caller's check let it through, is dropped with a warning rather than failing the reply."""
        if params.grammar is None:
            return None
        try:
            view = grammar_tokenizer(self.tokenizer, params.stop_token_ids)
            return Constraint(view, params.grammar, params.stop_token_ids)
        except GrammarError as err:
            log.warning("decoding without constraints: the grammar failed to compile: %s", err)
            return None

    def expect_request(self) -> None:
        # Counts as an arrival for the wait of _gather (a float store: no lock needed; a
        # gathering worker reads it again when its wait ends).
        self._last_arrival = time.perf_counter()

    def submit_all(self, requests: list[Request]) -> None:
        """Hand requests to the worker together (read each with :meth:`_stream`)."""
        with self._cond:
            if self._stopping:
                raise EngineError(f"the {self.name} engine is closed")
            if self._worker is None:
                self._worker = threading.Thread(target=self._run, name=f"{self.name}-batch", daemon=True)
                self._worker.start()
            self._waiting.extend(requests)
            self._last_arrival = time.perf_counter()
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._worker is not None:
            self._worker.join(timeout=30)
        if self.draft_model is not None:
            self.draft_model.close()

    # -- the worker's side ---------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopping and not self._has_work():
                    if not self._cond.wait(_IDLE_EXIT) and not self._active and not self._waiting:
                        # Idle: end the thread, so that an engine nobody uses can be freed
                        # (the thread holds it); the next request starts a new one.
                        self._worker = None
                        return
                if self._waiting and not any(r.decoding for r in self._active):
                    self._gather()
                if self._stopping:
                    for request in self._waiting + self._active:
                        request.finish(EngineError(f"the {self.name} engine was closed"))
                        request.released.set()
                    return
                closed = [r for r in self._active if r.closed]
                self._active = [r for r in self._active if not r.closed]
                waiting = list(self._waiting)
            for request in closed:
                self._let_go(request)
            admitted = []
            for request in waiting:
                if request.closed:  # gave up before it started
                    request.released.set()
                    admitted.append(request)
                elif len(self._active) < self.max_batch and self._start(request):
                    self._active.append(request)
                    admitted.append(request)
            with self._cond:
                self._waiting = [r for r in self._waiting if r not in admitted]
            for request in self._active:
                if request.cancel is not None and request.cancel.is_set():
                    request.finish()
            if not self._step() and not admitted and not closed:
                with self._cond:  # nothing could move (no free cache): wait for a change
                    self._cond.wait(0.05)

    def _gather(self) -> None:
        """Called with the lock held, by an idle worker that has requests to start: wait
        until no request has arrived or been announced (:meth:`expect_request`) for
        ``batch_wait`` seconds (at most ``BATCH_WAIT_LIMIT`` of them), so that requests
        sent together share their first forward pass instead of the later ones waiting
        for the first one's."""
        deadline = time.perf_counter() + BATCH_WAIT_LIMIT * self.batch_wait
        while not self._stopping:
            now = time.perf_counter()
            until = min(self._last_arrival + self.batch_wait, deadline)
            if now >= until:
                return
            self._cond.wait(until - now)

    def _has_work(self) -> bool:
        return (
            any(r.closed or r.decoding for r in self._active)
            or (bool(self._waiting) and len(self._active) < self.max_batch)
            or any(r.closed for r in self._waiting)
        )

    def _start(self, request: Request) -> bool:
        try:
            if not self._admit(request):
                return False
        except Exception as err:  # noqa: BLE001 - handed to the caller
            log.exception("admitting a request failed")
            request.finish(err)
            self._let_go(request)
            return False
        request.started = time.perf_counter()
        return True

    def _let_go(self, request: Request) -> None:
        # The reader consumed `consumed` tokens; a one-at-a-time engine would hold the
        # prompt plus all of them but the last in its cache.
        keep = len(request.prompt_ids) + max(request.consumed - 1, 0)
        try:
            self._release(request, keep)
        except Exception:  # noqa: BLE001 - the request is over either way
            log.exception("releasing a request failed")
        finally:
            request.released.set()

    def _step(self) -> bool:
        # Prompts whose last logits came with their admission: their first token, no forward pass.
        ready = [r for r in self._active if r.ready is not None and not r.finished]
        taken = []
        for request in ready:
            row, request.ready = request.ready, None
            taken.append(self._take(request, row))
        self._hand_over(taken)
        room = self.max_step_tokens
        work: list[Work] = []
        # Decoding requests first (one token each, plus a draft where speculation is on),
        # then prompt chunks in the room left.
        for request in sorted(self._active, key=lambda r: len(r.todo) > 1):
            if not request.decoding or not request.todo or room <= 0:
                continue
            ids = request.todo[:room]
            work.append(Work(request, ids, logits=len(ids) == len(request.todo)))
            room -= len(ids)
        if not work:
            return bool(ready)
        step_started = time.perf_counter()
        drafting = self._add_drafts(work, room)
        decode_only = all(len(item.ids) - item.draft == 1 for item in work)
        started = time.perf_counter()
        try:
            rows = self._forward(work)
        except Exception as err:  # noqa: BLE001 - every request in the step gets the error
            log.exception("%s forward pass failed", self.name)
            for item in work:
                item.request.finish(err if isinstance(err, EngineError) else EngineError(str(err)))
            return True
        elapsed = time.perf_counter() - started
        taken = []
        for item, row in zip(work, rows):
            request = item.request
            request.todo = request.todo[len(item.ids) - item.draft :]
            if not request.generated:
                request.stats.prefill_seconds += elapsed
            if row is None:
                continue
            if item.draft:
                taken.extend(self._verify(item, row))
            else:
                taken.append(self._take(request, row))
        if decode_only:
            seconds = time.perf_counter() - step_started
            self._time_step(work, drafting, sum(got is not None for got in taken), seconds)
        self._hand_over(taken)
        return True

    def _take(self, request: Request, row: np.ndarray) -> tuple[Request, int, bool] | None:
        """Sample the request's next token from ``row``; the token to hand to its reader, and
        whether it is the last (None when sampling failed and the request has ended)."""
        try:
            token = request.sampler(row)
            request.sampler.observe(token)
            if request.sampler.constraint is not None and request.sampler.constraint.unknown_tool:
                request.stats.unknown_tool = True
        except Exception as err:  # noqa: BLE001 - NaN logits and the like, for this request only
            request.finish(err)
            return None
        request.generated.append(token)
        if request.speculator is not None:
            request.speculator.observe(token)
        last = len(request.generated) >= request.budget or token in request.params.stop_token_ids
        if not last:
            request.todo = [token]
        return request, token, last

    @staticmethod
    def _hand_over(taken: list[tuple[Request, int, bool] | None]) -> None:
        # After the whole step is sampled: each reader woken here would otherwise take the
        # interpreter lock from the worker in the middle of sampling the others.
        for item in taken:
            if item is not None:
                request, token, last = item
                request.tokens.put(token)
                if last:
                    request.finish()

    # -- what a subclass provides --------------------------------------------------
    @abstractmethod
    def _admit(self, request: Request) -> bool:
        """Give the request a cache (reusing its state's prefix), set ``request.todo`` to the
        prompt ids still to compute and fill ``stats.reused_tokens``/``computed_tokens``.
        A subclass that computed the whole prompt here leaves ``todo`` empty and puts the
        last position's logits in ``request.ready``. Return False to leave it waiting."""

    @abstractmethod
    def _forward(self, work: list[Work]) -> list[np.ndarray | None]:
        """Run the step; the last position's logits (float32, vocab) for each item that wants them.
        The rows may be views that the next forward pass overwrites: the worker samples from
        them before it runs another."""

    @abstractmethod
    def _release(self, request: Request, keep: int) -> None:
        """The request is over: keep the first ``keep`` cached ids for its state (if any)."""
