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
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import httpx

from chatforge.engines.base import Chunk, Engine, EngineError, GenerationStats, KVState, SamplingParams

log = logging.getLogger(__name__)

DEFAULT_CONTEXT = 32768


class RemoteEngine(Engine):
    name = "remote"

    def __init__(
        self,
        url: str,
        tokenizer: Any,
        *,
        model: str | None = None,
        api_key: str | None = None,
        context_length: int | None = None,
        timeout: float = 600.0,
        prompt_format: str = "text",
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if prompt_format not in ("text", "ids"):
            raise ValueError(f"prompt_format must be 'text' or 'ids', got {prompt_format!r}")
        base = url.rstrip("/")
        if not base.endswith("/v1"):
            base += "/v1"
        self.base_url = base
        self.prompt_format = prompt_format
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(
            base_url=base, headers=headers, timeout=httpx.Timeout(timeout, connect=10.0), transport=transport
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
        try:
            response = self._client.get("/models")
        except httpx.HTTPError as err:
            raise EngineError(f"cannot reach the remote engine at {self.base_url}: {err}") from None
        if response.status_code in (401, 403):
            raise EngineError(f"{self.base_url} refused the API key (HTTP {response.status_code})")
        if response.status_code != 200:
            raise EngineError(
                f"{self.base_url}/models answered HTTP {response.status_code}: {response.text[:200]}"
            )
        data = response.json().get("data") or []
        return [m for m in data if isinstance(m, dict)]

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
        try:
            with self._client.stream("POST", "/completions", json=body) as response:
                if response.status_code != 200:
                    response.read()
                    raise EngineError(
                        f"the remote engine answered HTTP {response.status_code}: {response.text[:500]}"
                    )
                first = True
                for event in _sse_events(response.iter_lines()):
                    if cancel is not None and cancel.is_set():
                        return  # leaving the block closes the connection; servers abort on that
                    _read_usage(event, stats)
                    for choice in event.get("choices") or []:
                        text = choice.get("text") or ""
                        if text:
                            if first:
                                stats.prefill_seconds = time.perf_counter() - started
                                first = False
                            yield from self.tokenizer.encode(text, add_special_tokens=False)
                        if choice.get("finish_reason"):
                            stats.__dict__["server_finish"] = choice["finish_reason"]
        except httpx.HTTPError as err:
            raise EngineError(f"the remote engine at {self.base_url} failed: {err}") from None
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


def _sse_events(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    for line in lines:
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
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
