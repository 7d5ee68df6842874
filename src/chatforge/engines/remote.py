"""The remote engine: any OpenAI-compatible ``/v1/completions`` endpoint behind the
:class:`Engine` interface (vLLM, SGLang, llama.cpp's server, Ollama, another chatforge).

Callers still pass token ids: the engine decodes them with the local tokenizer (which
must be the served model's) into the rendered prompt text, streams the completion, and
maps each text piece back to ids by encoding it. For byte-level BPE tokenizers decoding
those ids gives the text back exactly, so stop strings, tool-call parsing and the
agent loop see what the server wrote. KV reuse across turns is the server's business
(vLLM and SGLang cache prefixes automatically); ``stats.reused_tokens`` reports what the
server says it reused when it says it (``usage.prompt_tokens_details.cached_tokens``).

``prompt_format="ids"`` sends the token ids themselves (vLLM, SGLang and llama.cpp's C++
server accept a list of ids as the prompt), which skips the server's re-tokenisation.

Hiccups are retried with :mod:`tenacity`: a refused or dropped connection, a connect
timeout, and HTTP 429/502/503/504 get up to ``max_tries`` tries in all, waiting
``backoff`` seconds doubling with jitter, or what the server's ``Retry-After`` asks for.
Only the opening of a request is retried: once the stream has started, a failure raises
an :class:`EngineError` instead, since sending the request again would repeat text the
caller already has. A read timeout is not retried either: the server may still be
working on the request, and a second copy would only add to its load.
"""

from __future__ import annotations

import email.utils
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import httpx
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt, stop_any
from tenacity.wait import wait_base, wait_exponential, wait_random_exponential

from chatforge.engines.base import Chunk, Engine, EngineError, GenerationStats, KVState, SamplingParams
from chatforge.tokenizer import Tokenizer

log = logging.getLogger(__name__)

DEFAULT_CONTEXT = 32768
DEFAULT_MAX_TRIES = 5
DEFAULT_BACKOFF = 0.5  # seconds before the second try (with jitter); doubled for each further one
DEFAULT_MAX_WAIT = 30.0  # the longest single wait, and the longest Retry-After honoured
DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_READ_TIMEOUT = 600.0  # the longest silence while reading: a long prefill on a busy server
# Answers that say "not now" rather than "no": overloaded, or a proxy whose upstream is restarting.
RETRY_STATUSES = frozenset({429, 502, 503, 504})
# Failures before the server answered. ReadTimeout is not among them (see the module docstring).
_RETRY_ERRORS = (httpx.NetworkError, httpx.ConnectTimeout, httpx.RemoteProtocolError)


class RemoteEngine(Engine):
    name = "remote"

    def __init__(
        self,
        url: str,
        tokenizer: Tokenizer,
        *,
        model: str | None = None,
        api_key: str | None = None,
        context_length: int | None = None,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        read_timeout: float = DEFAULT_READ_TIMEOUT,
        max_tries: int = DEFAULT_MAX_TRIES,
        backoff: float = DEFAULT_BACKOFF,
        max_wait: float = DEFAULT_MAX_WAIT,
        prompt_format: str = "text",
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        """``max_tries`` counts all tries of a request, the first included (1 turns retries
        off). The wait before try n+1 is ``backoff * 2**(n-1)`` seconds, its second half
        random (jitter, so that many clients do not come back at the same moment), and at
        most ``max_wait``. A ``Retry-After`` from the server replaces that wait; one longer
        than ``max_wait`` ends the tries at once. ``connect_timeout`` bounds opening a
        connection, ``read_timeout`` the silence between two pieces of the reply (seconds)."""
        if prompt_format not in ("text", "ids"):
            raise ValueError(f"prompt_format must be 'text' or 'ids', got {prompt_format!r}")
        if max_tries < 1:
            raise ValueError(f"max_tries must be 1 or more (1 = no retries), got {max_tries}")
        if backoff < 0 or max_wait < 0:
            raise ValueError(f"backoff and max_wait must be 0 or more, got {backoff} and {max_wait}")
        if connect_timeout <= 0 or read_timeout <= 0:
            raise ValueError(
                f"timeouts must be positive, got connect {connect_timeout} and read {read_timeout}"
            )
        base = url.rstrip("/")
        if not base.endswith("/v1"):
            base += "/v1"
        self.base_url = base
        self.prompt_format = prompt_format
        self.max_tries, self.backoff, self.max_wait = max_tries, backoff, max_wait
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(
            base_url=base,
            headers=headers,
            timeout=httpx.Timeout(read_timeout, connect=connect_timeout),
            transport=transport,
        )
        info = self._models()
        ids = [m.get("id") for m in info]
        if model is None:
            if not ids:
                raise EngineError(f"{base}/models lists no model; pass --remote-model")
            model = str(ids[0])
        elif ids and model not in ids:
            log.warning("%s does not list model %r (it lists %s); trying it anyway", base, model, ids)
        self.model = model
        served = next((m for m in info if m.get("id") == model), {})
        limit = context_length or served.get("max_model_len") or _meta_context(served) or DEFAULT_CONTEXT
        super().__init__(tokenizer, int(limit))
        log.info("remote engine: %s model %r, context %d tokens", base, model, self.context_length)

    def _models(self) -> list[dict[str, Any]]:
        response = self._open("GET", "/models")
        try:
            response.read()
        except httpx.HTTPError as err:
            raise EngineError(f"reading {self.base_url}/models failed: {_describe(err)}") from None
        finally:
            response.close()
        if response.status_code in (401, 403):
            raise EngineError(f"{self.base_url} refused the API key (HTTP {response.status_code})")
        if response.status_code != 200:
            raise EngineError(
                f"{self.base_url}/models answered HTTP {response.status_code}: {response.text[:200]}"
            )
        data = response.json().get("data") or []
        return [m for m in data if isinstance(m, dict)]

    def _open(self, method: str, path: str, body: dict[str, Any] | None = None) -> httpx.Response:
        """The server's answer to a request with its body still unread (close it), after as
        many tries as hiccups call for; any status but those in ``RETRY_STATUSES``."""
        url = f"{self.base_url}{path}"
        retrying = Retrying(
            stop=stop_any(stop_after_attempt(self.max_tries), _stop_on_long_retry_after(self.max_wait)),
            wait=_wait_retry_after(_backoff(self.backoff, self.max_wait)),
            retry=retry_if_exception_type(_Retryable),
            before_sleep=lambda state: self._log_retry(url, state),
            retry_error_callback=lambda state: self._give_up(url, state),
        )
        return retrying(self._try_once, method, path, body)

    def _try_once(self, method: str, path: str, body: dict[str, Any] | None) -> httpx.Response:
        request = self._client.build_request(method, path, json=body)
        try:
            response = self._client.send(request, stream=True)
        except _RETRY_ERRORS as err:
            raise _Retryable(_describe(err)) from err
        except httpx.HTTPError as err:  # a read timeout, say: the server may still be busy with it
            hint = ""
            if isinstance(err, httpx.TimeoutException):
                hint = (
                    " (not retried: the server may still be working on it; "
                    "a longer --remote-read-timeout gives it time)"
                )
            raise EngineError(f"the remote engine at {request.url} failed: {_describe(err)}{hint}") from None
        if response.status_code in RETRY_STATUSES:
            try:
                response.read()
            except httpx.HTTPError:
                pass  # the status says enough
            finally:
                response.close()
            raise _Retryable(
                f"HTTP {response.status_code}{_excerpt(response)}",
                retry_after_seconds(response.headers.get("retry-after")),
            )
        return response

    def _log_retry(self, url: str, state: RetryCallState) -> None:
        wait = state.next_action.sleep if state.next_action is not None else 0.0
        log.warning(
            "remote engine at %s: %s; try %d of %d in %.2f s",
            url,
            _failure(state),
            state.attempt_number + 1,
            self.max_tries,
            wait,
        )

    def _give_up(self, url: str, state: RetryCallState) -> Any:
        failure = _failure(state)
        tries = f"{state.attempt_number} {'try' if state.attempt_number == 1 else 'tries'}"
        if isinstance(failure, _Retryable) and (failure.retry_after or 0.0) > self.max_wait:
            raise EngineError(
                f"cannot reach the remote engine at {url}: after {tries} it asked to wait "
                f"{failure.retry_after:.0f} s (Retry-After), longer than the {self.max_wait:g} s "
                f"chatforge waits; the last answer was {failure}. Try again later"
            )
        raise EngineError(
            f"cannot reach the remote engine at {url}: gave up after {tries}, the last failed "
            f"with {failure}. Check that the server is up, or allow more tries (--remote-max-tries)"
        )

    def request_body(self, prompt_ids: list[int], params: SamplingParams) -> dict[str, Any]:
        """The /v1/completions request for a prompt (public so tests can pin it)."""
        prompt: Any = (
            list(prompt_ids)
            if self.prompt_format == "ids"
            else self.tokenizer.decode(prompt_ids, skip_special_tokens=False)
        )
        body: dict[str, Any] = {
            "model": self.model,
            "prompt": prompt,
            "max_tokens": getattr(params, "remote_max_tokens", params.max_new_tokens),
            "temperature": 0.0 if params.greedy else params.temperature,
            "top_p": 1.0 if params.greedy else params.top_p,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if params.stop:
            body["stop"] = list(params.stop)[:4]  # OpenAI allows four; the rest are cut locally
        if params.seed is not None:
            body["seed"] = params.seed
        if params.presence_penalty:
            body["presence_penalty"] = params.presence_penalty
        if params.frequency_penalty:
            body["frequency_penalty"] = params.frequency_penalty
        # Extensions that vLLM, SGLang and llama.cpp read; sent only when they matter.
        if params.top_k and not params.greedy:
            body["top_k"] = params.top_k
        if params.repetition_penalty != 1.0:
            body["repetition_penalty"] = params.repetition_penalty
            body["repeat_penalty"] = params.repetition_penalty  # llama.cpp's name
        if params.stop_token_ids:
            body["stop_token_ids"] = list(params.stop_token_ids)
        return body

    def generate_ids(
        self,
        prompt_ids: list[int],
        params: SamplingParams,
        stats: GenerationStats,
        state: KVState | None = None,
        cancel: threading.Event | None = None,
    ) -> Iterator[int]:
        body = self.request_body(prompt_ids, params)
        stats.computed_tokens = len(prompt_ids)
        started = time.perf_counter()
        url = f"{self.base_url}/completions"
        response = self._open("POST", "/completions", body)
        delivered = 0  # ids yielded: once there are any, nothing may be sent again
        try:
            if response.status_code != 200:
                try:
                    response.read()
                except httpx.HTTPError:
                    pass  # the status says enough
                raise EngineError(
                    f"the remote engine at {url} answered HTTP {response.status_code}{_excerpt(response, 500)}"
                )
            events = _Events(response.iter_lines())
            try:
                for event in events:
                    if cancel is not None and cancel.is_set():
                        return  # closing the response drops the connection; servers abort on that
                    _read_usage(event, stats)
                    for choice in event.get("choices") or []:
                        text = choice.get("text") or ""
                        if text:
                            if not delivered:
                                stats.prefill_seconds = time.perf_counter() - started
                            ids = self.tokenizer.encode(text, add_special_tokens=False)
                            delivered += len(ids)
                            yield from ids
                        if choice.get("finish_reason"):
                            stats.__dict__["server_finish"] = choice["finish_reason"]
            except httpx.HTTPError as err:
                raise EngineError(_broken(url, delivered, _describe(err))) from None
            if not events.done and "server_finish" not in stats.__dict__:
                # The body ended cleanly but early: a proxy or a server that went away.
                raise EngineError(_broken(url, delivered, "the reply ended without a finish_reason"))
        finally:
            response.close()
        if stats.__dict__.get("server_finish") == "stop" and params.stop_token_ids:
            # The server stopped at an end-of-turn token; tell the text layer it was a stop.
            yield params.stop_token_ids[0]

    def stream(
        self,
        prompt_ids: list[int],
        params: SamplingParams,
        state: KVState | None = None,
        cancel: threading.Event | None = None,
    ) -> Iterator[Chunk]:
        # The server enforces max_tokens in its own tokens; re-encoded text can take more ids
        # than the server's tokens (a lone replacement character, say), so the local budget
        # must not cut the reply short.
        local = replace(params, max_new_tokens=self.context_length)
        local.remote_max_tokens = params.max_new_tokens  # type: ignore[attr-defined]
        for chunk in super().stream(prompt_ids, local, state, cancel):
            stats = chunk.stats
            if stats is not None:
                server = stats.__dict__
                if chunk.finish_reason == "length" and server.get("server_finish") == "stop":
                    chunk.finish_reason = stats.finish_reason = "stop"  # a server-side stop string or EOS
                if isinstance(server.get("server_completion_tokens"), int):
                    stats.completion_tokens = server["server_completion_tokens"]
            yield chunk

    def close(self) -> None:
        self._client.close()


class _Events:
    """The JSON events of a server-sent-event stream; ``done`` once ``data: [DONE]`` came."""

    def __init__(self, lines: Iterable[str]) -> None:
        self.lines = lines
        self.done = False

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for line in self.lines:
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                self.done = True
                return
            try:
                event = json.loads(data)
            except json.JSONDecodeError:
                log.debug("skipping a malformed event: %r", data[:200])
                continue
            if isinstance(event, dict) and "error" in event:
                raise EngineError(f"the remote engine reported an error: {event['error']}")
            if isinstance(event, dict):
                yield event


class _Retryable(Exception):
    """A failure worth another try, with the wait the server asked for, if it did."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


class _wait_retry_after(wait_base):  # noqa: N801  (named like tenacity's own strategies)
    """The server's ``Retry-After`` when it sent one, else the ``fallback`` strategy's wait."""

    def __init__(self, fallback: wait_base) -> None:
        self.fallback = fallback

    def __call__(self, retry_state: RetryCallState) -> float:
        failure = _failure(retry_state)
        if isinstance(failure, _Retryable) and failure.retry_after is not None:
            return failure.retry_after
        return self.fallback(retry_state)


def _backoff(backoff: float, max_wait: float) -> wait_base:
    """Exponential backoff with "equal jitter": a fixed half, which gives a restarting server
    the time it needs, plus a random half, which spreads clients that failed together."""
    half, cap = backoff / 2, max_wait / 2
    return wait_exponential(multiplier=half, max=cap) + wait_random_exponential(multiplier=half, max=cap)


def _stop_on_long_retry_after(max_wait: float) -> Callable[[RetryCallState], bool]:
    """Stop at once when the server asks for a longer wait than we would make."""

    def stop(retry_state: RetryCallState) -> bool:
        failure = _failure(retry_state)
        return isinstance(failure, _Retryable) and (failure.retry_after or 0.0) > max_wait

    return stop


def retry_after_seconds(value: str | None, now: datetime | None = None) -> float | None:
    """A ``Retry-After`` header as seconds from ``now``: delay-seconds (fractions accepted,
    which some servers send) or an HTTP-date; ``None`` when absent or unreadable."""
    if not value or not value.strip():
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value.strip())
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # HTTP-dates are GMT; a "-0000" zone parses as naive
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    if not math.isfinite(seconds):
        return None
    return max(seconds, 0.0)


def _failure(retry_state: RetryCallState) -> BaseException | None:
    return retry_state.outcome.exception() if retry_state.outcome is not None else None


def _describe(err: BaseException) -> str:
    text = str(err)
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _excerpt(response: httpx.Response, limit: int = 200) -> str:
    try:
        text = response.text.strip()
    except (httpx.ResponseNotRead, UnicodeDecodeError):
        return ""
    return f": {text[:limit]}" if text else ""


def _broken(url: str, delivered: int, reason: str) -> str:
    return (
        f"the stream from the remote engine at {url} broke after {delivered} tokens ({reason}); "
        "not retried, since sending the request again would repeat text already delivered"
    )


def _read_usage(event: dict[str, Any], stats: GenerationStats) -> None:
    usage = event.get("usage")
    if not isinstance(usage, dict):
        return
    details = usage.get("prompt_tokens_details") or {}
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    if isinstance(usage.get("completion_tokens"), int):
        stats.__dict__["server_completion_tokens"] = usage["completion_tokens"]
    if isinstance(cached, int) and cached >= 0:
        stats.reused_tokens = cached
        stats.computed_tokens = max(stats.prompt_tokens - cached, 0)


def _meta_context(model: dict[str, Any]) -> int | None:
    meta = model.get("meta")  # llama.cpp's server reports the training context here
    if isinstance(meta, dict):
        value = meta.get("n_ctx") or meta.get("n_ctx_train")
        if isinstance(value, int) and value > 0:
            return value
    return None
