"""``/v1/completions``: raw text completion of each prompt, without the chat template."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

from fastapi import APIRouter, Request

from chatforge.chat import ChatModel, sampling_params
from chatforge.serve.errors import APIError
from chatforge.serve.plan import sampling_kwargs
from chatforge.serve.protocol import CompletionRequest, Usage
from chatforge.serve.runner import watch_disconnect
from chatforge.serve.sse import DONE, event_stream, sse
from chatforge.serve.state import Server, ServerState
from chatforge.serve.worker import Job

router = APIRouter()


@router.post("/v1/completions")
async def completions(req: CompletionRequest, request: Request, state: Server) -> Any:
    model = state.model
    model.engine.expect_request()
    state.check_model(req.model)
    prompts = [req.prompt] if isinstance(req.prompt, str) else list(req.prompt)
    if not prompts:
        raise APIError(400, "prompt: must not be empty", param="prompt", code="invalid_value")
    max_tokens = req.max_tokens or state.settings.default_max_tokens or 16  # OpenAI's default for this route
    params = sampling_kwargs(req, max_tokens, model.engine.context_length)
    job = state.runner.submit(text_job(model, prompts, params, req.n))
    reply = TextReply(req, prompts, state.model_id)
    if not req.stream:
        return await reply.whole(state, request, job)
    items = await state.runner.peeked(job)
    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    return event_stream(reply.stream(state, job, items, include_usage))


class TextReply:
    """A text completion's answer: the choices of every prompt, whole or streamed."""

    def __init__(self, req: CompletionRequest, prompts: list[str], model_id: str) -> None:
        self.req = req
        self.prompts = prompts
        self.model_id = model_id
        self.id = f"cmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())

    def body(self, choices: list[dict[str, Any]], usage: dict[str, Any] | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "object": "text_completion",
            "created": self.created,
            "model": self.model_id,
            "choices": choices,
        }
        if usage is not None:
            out["usage"] = usage
        return out

    def echo(self, index: int) -> str:
        return self.prompts[index // self.req.n] if self.req.echo else ""

    def count(self, usage: Usage, index: int, chunk: Any) -> str | None:
        """Add a finished choice's tokens to ``usage``; its finish reason (None until it finishes)."""
        if chunk.stats is None:
            return None
        usage.prompt_tokens += chunk.stats.prompt_tokens if index % self.req.n == 0 else 0
        usage.completion_tokens += chunk.stats.completion_tokens
        return "length" if chunk.stats.finish_reason == "length" else "stop"

    async def whole(self, state: ServerState, request: Request, job: Job) -> dict[str, Any]:
        texts: dict[int, list[str]] = {}
        finish: dict[int, str] = {}
        usage = Usage()
        watcher = asyncio.create_task(watch_disconnect(request, job))
        try:
            async for index, chunk in state.runner.items(job, state.runner.deadline()):
                texts.setdefault(index, [self.echo(index)]).append(chunk.text)
                reason = self.count(usage, index, chunk)
                if reason is not None:
                    finish[index] = reason
        finally:
            watcher.cancel()
        state.metrics.record_usage(usage.prompt_tokens, usage.completion_tokens, None)
        choices = [
            {"index": i, "text": "".join(t), "logprobs": None, "finish_reason": finish.get(i, "stop")}
            for i, t in sorted(texts.items())
        ]
        return self.body(choices, usage.to_dict())

    async def stream(
        self, state: ServerState, job: Job, items: AsyncIterator[Any], include_usage: bool
    ) -> AsyncIterator[str]:
        usage = Usage()
        seen: set[int] = set()
        try:
            async for index, chunk in items:
                text = chunk.text
                if index not in seen:
                    seen.add(index)
                    text = self.echo(index) + text
                reason = self.count(usage, index, chunk)
                if text or reason:
                    choice = {"index": index, "text": text, "logprobs": None, "finish_reason": reason}
                    yield sse(self.body([choice]))
        except APIError as err:
            yield sse(err.body())
        finally:
            job.cancel.set()
        state.metrics.record_usage(usage.prompt_tokens, usage.completion_tokens, None)
        if include_usage:
            yield sse(self.body([], usage.to_dict()))
        yield DONE


def text_job(model: ChatModel, prompts: list[str], params: dict[str, Any], n: int) -> Any:
    """Raw completion of each prompt (no chat template): yields ``(index, chunk)``."""
    engine = model.engine
    tokenizer = engine.tokenizer

    def run(cancel: threading.Event) -> Iterator[tuple[int, Any]]:
        index = 0
        for prompt in prompts:
            ids = list(tokenizer(prompt)["input_ids"])
            p = dict(params)
            stops = p.pop("stop", None) or []
            max_length = p.pop("max_length", None)
            sp = sampling_params(model.template, max_length=max_length, prompt_tokens=len(ids), **p)
            sp.stop = list(stops)
            sp.stop_token_ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
            for k in range(n):
                if n > 1 and sp.seed is not None:
                    sp.seed = params["seed"] + k
                for chunk in engine.stream(ids, sp, cancel=cancel):
                    yield index, chunk
                if cancel.is_set():
                    return
                index += 1

    return run
