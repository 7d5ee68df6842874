"""The engine interface: stream tokens for a prompt under sampling parameters.

An engine takes token ids (the template renders them) and yields generated token
ids. The text layer shared by all engines lives here too: incremental decoding that
never splits a UTF-8 character, stop strings, and the counters a caller reads
(prompt tokens computed and reused, completion tokens, time to first token).

Engines keep a conversation's KV cache in a :class:`KVState`; passing the same state
for the next turn lets the engine reuse the longest common prefix, so only new tokens
are computed.
"""

from __future__ import annotations

import math
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from chatforge.tokenizer import Tokenizer


class EngineError(RuntimeError):
    """Generation failed; the text says why."""


class PromptTooLongError(ValueError):
    """The prompt does not fit the model's context window."""

    def __init__(self, prompt_tokens: int, context_length: int, max_new_tokens: int = 0) -> None:
        self.prompt_tokens = prompt_tokens
        self.context_length = context_length
        super().__init__(
            f"the prompt has {prompt_tokens} tokens but the model's context window is {context_length} tokens"
            + (f" (with {max_new_tokens} new tokens requested)" if max_new_tokens else "")
        )


@dataclass
class SamplingParams:
    """How to pick each next token. ``do_sample=False`` or ``temperature=0`` is greedy."""

    max_new_tokens: int = 512
    temperature: float = 0.8
    top_p: float = 0.8
    top_k: int = 0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    do_sample: bool = True
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    # What the reply may be, as an llguidance grammar (chatforge.constrain); None: anything.
    grammar: str | None = None

    def __post_init__(self) -> None:
        self.validate()

    @property
    def greedy(self) -> bool:
        return not self.do_sample or self.temperature == 0

    def validate(self) -> None:
        def number(name: str, lo: float, hi: float, lo_open: bool = False) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
                raise ValueError(f"{name} must be a number, got {value!r}")
            if value < lo or value > hi or (lo_open and value == lo):
                bracket = "(" if lo_open else "["
                raise ValueError(f"{name} must be in {bracket}{lo}, {hi}], got {value}")

        if (
            isinstance(self.max_new_tokens, bool)
            or not isinstance(self.max_new_tokens, int)
            or self.max_new_tokens < 1
        ):
            raise ValueError(f"max_new_tokens must be a positive integer, got {self.max_new_tokens!r}")
        number("temperature", 0.0, 100.0)
        number("top_p", 0.0, 1.0, lo_open=True)
        number("repetition_penalty", 0.0, 100.0, lo_open=True)
        number("presence_penalty", -2.0, 2.0)
        number("frequency_penalty", -2.0, 2.0)
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            raise ValueError(f"top_k must be a non-negative integer, got {self.top_k!r}")
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        if not all(isinstance(s, str) and s for s in self.stop):
            raise ValueError("stop must be a list of non-empty strings")
        if self.grammar is not None and not isinstance(self.grammar, str):
            raise ValueError(f"grammar must be a string, got {type(self.grammar).__name__}")


#: The sampling settings a user sets by name (an OpenAI request, the web UI's sidebar, the
#: CLI's flags), besides temperature and the token limits.
SAMPLING_SETTINGS = ("top_p", "top_k", "repetition_penalty", "presence_penalty", "frequency_penalty", "seed")


def sampling_options(settings: Mapping[str, Any], max_new_tokens: int | None = None) -> dict[str, Any]:
    """``ChatModel.generate`` keyword arguments from a user's sampling settings: the ones set
    (None means unset), sampling on exactly when the temperature is above 0, and
    ``max_new_tokens`` when given. The values are checked where `SamplingParams` is made."""
    options: dict[str, Any] = {}
    temperature = settings.get("temperature")
    if temperature is not None:
        options["temperature"] = temperature
        options["do_sample"] = isinstance(temperature, int | float) and temperature > 0
    for name in SAMPLING_SETTINGS:
        if settings.get(name) is not None:
            options[name] = settings[name]
    if max_new_tokens is not None:
        options["max_new_tokens"] = max_new_tokens
    return options


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    reused_tokens: int = 0  # prompt tokens whose KV came from the cache
    computed_tokens: int = 0  # prompt tokens the engine had to run through the model
    completion_tokens: int = 0
    finish_reason: str | None = None  # "stop", "length", "cancelled"
    unknown_tool: bool = False  # a call began with a name no offered tool has (chatforge.constrain)
    drafted_tokens: int = 0  # guessed tokens checked by speculative decoding
    accepted_tokens: int = 0  # of them, those the model's own choice agreed with
    time_to_first_token: float | None = None
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0

    @property
    def decode_tokens_per_second(self) -> float:
        steps = max(self.completion_tokens - 1, 0)
        return steps / self.decode_seconds if self.decode_seconds > 0 else 0.0


@dataclass
class Chunk:
    """New text (and the ids that made it) as generation goes; ``stats`` on the last one."""

    text: str
    token_ids: list[int]
    finish_reason: str | None = None
    stats: GenerationStats | None = None


class KVState:
    """A conversation's cached keys and values, and the token ids they were computed for."""

    def __init__(self) -> None:
        self.ids: list[int] = []
        self.cache: Any = None
        self.draft: KVState | None = None  # a draft model's cache of the conversation (speculative decoding)
        self.lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.ids)

    def reset(self) -> None:
        self.ids = []
        self.cache = None
        if self.draft is not None:
            self.draft.reset()


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


class Engine(ABC):
    """Streams token ids for a prompt. Implementations: transformers, llama.cpp, remote."""

    name = "engine"
    supports_grammar = False  # whether SamplingParams.grammar is applied (the local engines)

    def __init__(self, tokenizer: Tokenizer, context_length: int) -> None:
        self.tokenizer = tokenizer
        self.context_length = context_length

    @abstractmethod
    def generate_ids(
        self,
        prompt_ids: list[int],
        params: SamplingParams,
        stats: GenerationStats,
        state: KVState | None = None,
        cancel: threading.Event | None = None,
    ) -> Iterator[int]:
        """Yield generated token ids one by one, filling ``stats`` (reused/computed prompt tokens)."""

    def new_state(self) -> KVState:
        return KVState()

    def expect_request(self) -> None:
        """A request is on its way: the server calls this as one arrives, before it renders
        the prompt. Engines that batch requests wait for it (see ``BatchingEngine``); the
        others need not know."""
        return None

    def check_prompt(self, prompt_ids: list[int], params: SamplingParams) -> None:
        if len(prompt_ids) >= self.context_length:
            raise PromptTooLongError(len(prompt_ids), self.context_length, params.max_new_tokens)
        if not prompt_ids:
            raise ValueError("the prompt is empty")

    def stream(
        self,
        prompt_ids: list[int],
        params: SamplingParams,
        state: KVState | None = None,
        cancel: threading.Event | None = None,
    ) -> Iterator[Chunk]:
        """Text chunks as they are generated; the last chunk carries ``finish_reason`` and stats."""
        self.check_prompt(prompt_ids, params)
        stats = GenerationStats(prompt_tokens=len(prompt_ids))
        decoder = IncrementalDecoder(self.tokenizer)
        stops = StopMatcher(params.stop)
        stop_ids = set(params.stop_token_ids)
        budget = min(params.max_new_tokens, self.context_length - len(prompt_ids))
        started = time.perf_counter()
        finish = "length"
        generated = 0
        pending: list[int] = []  # ids whose text is not out yet (a split character, a possible stop)
        tokens = self.generate_ids(prompt_ids, params, stats, state, cancel)
        try:
            for token in tokens:
                generated += 1
                if generated == 1:
                    stats.time_to_first_token = time.perf_counter() - started
                if token in stop_ids:
                    finish = "stop"
                    break
                pending.append(token)
                text, hit = stops.push(decoder.push(token))
                if text:
                    yield Chunk(text, pending)
                    pending = []
                if hit:
                    finish = "stop"
                    break
                if cancel is not None and cancel.is_set():
                    finish = "cancelled"
                    break
                if generated >= budget:
                    break
        finally:
            tokens.close()  # releases the engine (and updates the KV state) at once
        stats.completion_tokens = generated
        stats.finish_reason = finish
        total = time.perf_counter() - started
        if stats.time_to_first_token is not None:
            stats.decode_seconds = total - stats.time_to_first_token
        tail = "" if finish == "stop" else stops.flush(decoder.flush())
        yield Chunk(tail, pending, finish_reason=finish, stats=stats)

    def close(self) -> None:  # noqa: B027 - optional hook, most engines hold nothing
        """Release resources (threads, processes, memory)."""


class IncrementalDecoder:
    """Decodes one token at a time without splitting multi-byte characters."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix = 0  # where the window used for context starts
        self.read = 0  # ids up to here have been turned into text

    def push(self, token: int) -> str:
        self.ids.append(token)
        before = self.tokenizer.decode(self.ids[self.prefix : self.read], skip_special_tokens=False)
        after = self.tokenizer.decode(self.ids[self.prefix :], skip_special_tokens=False)
        if after.endswith("\ufffd") or len(after) <= len(before):
            return ""
        self.prefix, self.read = self.read, len(self.ids)
        return after[len(before) :]

    def flush(self) -> str:
        if self.read == len(self.ids):
            return ""
        before = self.tokenizer.decode(self.ids[self.prefix : self.read], skip_special_tokens=False)
        after = self.tokenizer.decode(self.ids[self.prefix :], skip_special_tokens=False)
        self.read = len(self.ids)
        return after[len(before) :]


class StopMatcher:
    """Cuts streamed text at the first stop string, holding back what could be the start of one."""

    def __init__(self, stops: list[str]) -> None:
        self.stops = [s for s in stops if s]
        self.pending = ""

    def push(self, text: str) -> tuple[str, bool]:
        if not self.stops:
            return text, False
        self.pending += text
        cut = min((at for s in self.stops if (at := self.pending.find(s)) != -1), default=-1)
        if cut != -1:
            out, self.pending = self.pending[:cut], ""
            return out, True
        hold = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(self.pending)), 0, -1):
                if self.pending.endswith(s[:k]):
                    hold = max(hold, k)
                    break
        out = self.pending[: len(self.pending) - hold]
        self.pending = self.pending[len(self.pending) - hold :]
        return out, False

    def flush(self, text: str = "") -> str:
        out, self.pending = self.pending + text, ""
        if self.stops:
            cut = min((at for s in self.stops if (at := out.find(s)) != -1), default=-1)
            if cut != -1:
                return out[:cut]
        return out
