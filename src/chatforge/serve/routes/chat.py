"""``/v1/chat/completions``: a request's generation run on the worker and answered in
OpenAI's shapes, whole or streamed.

Streaming follows OpenAI exactly: a first chunk with the assistant role, content deltas,
tool calls as indexed deltas (the first for a call carries index, id, type, name and
``arguments: ""``; later ones carry argument pieces), a last chunk with the
``finish_reason``, then an optional usage chunk (``choices: []``) and ``data: [DONE]``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request

from chatforge.chat import AUTO, ChatModel, ReplyEvent
from chatforge.engines.base import GenerationStats
from chatforge.messages import Message
from chatforge.serve.checks import complies, correction, normalise_json_reply
from chatforge.serve.errors import APIError, from_exception
from chatforge.serve.metrics import Metrics
from chatforge.serve.plan import ChatPlan, add_grammar, build_plan
from chatforge.serve.protocol import ChatCompletionRequest, Usage
from chatforge.serve.runner import Runner, watch_disconnect
from chatforge.serve.sse import DONE, event_stream, sse
from chatforge.serve.state import Server
from chatforge.serve.worker import Job

log = logging.getLogger(__name__)

ARGUMENT_PIECE = 24  # characters of tool-call arguments per streamed delta

router = APIRouter()


@router.post("/v1/chat/completions")
async def chat_completions(req: ChatCompletionRequest, request: Request, state: Server) -> Any:
    model, runner, metrics = state.model, state.runner, state.metrics
    model.engine.expect_request()
    state.check_model(req.model)
    plan = build_plan(req, model.engine.context_length, state.settings.default_max_tokens)
    add_grammar(plan, model)
    job = runner.submit(chat_job(model, plan))
    if not req.stream:
        outcomes = await collect_chat(runner, request, job)
        usage = usage_of(outcomes)
        metrics.record_usage(usage.prompt_tokens, usage.completion_tokens, _finish(outcomes))
        return chat_response(outcomes, state.model_id)
    items = await runner.peeked(job)
    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    return event_stream(
        stream_chat(job, _counted(items, metrics), state.model_id, include_usage, plan.buffered)
    )


@dataclass
class Outcome:
    """One finished choice."""

    index: int
    message: Message
    stats: GenerationStats
    attempts: int = 1
    completion_tokens: int = 0  # over all attempts



# -- the job that runs on the worker thread ------------------------------------------------
def chat_job(model: ChatModel, plan: ChatPlan) -> Any:
    """A worker job yielding ``(choice_index, ReplyEvent | Outcome)`` for each choice in turn."""

    def run(cancel: threading.Event) -> Iterator[tuple[int, ReplyEvent | Outcome]]:
        for index in range(plan.n):
            params = {**plan.params, "grammar": _grammar(plan)}
            if plan.n > 1 and params.get("seed") is not None:
                params["seed"] += index  # n identical samples would be pointless
            if plan.buffered:
                yield index, _checked_reply(model, plan, params, cancel, index)
                continue
            for event in model.generate(plan.messages, plan.tools, cancel=cancel, **params):
                if event.message is not None:
                    assert event.stats is not None
                    _trim_calls(plan, event.message)
                    yield index, event
                    yield (
                        index,
                        Outcome(
                            index, event.message, event.stats, completion_tokens=event.stats.completion_tokens
                        ),
                    )
                else:
                    yield index, event
            if cancel.is_set():
                return

    return run


def _grammar(plan: ChatPlan) -> str | None:
    """The plan's grammar; with tools offered and none required, ``AUTO``: the same grammar,
    and a reply that calls a made-up tool is answered as text (``ChatModel.generate``)."""
    if plan.grammar is not None and plan.tools and plan.force_tool is None:
        return AUTO
    return plan.grammar


def _checked_reply(
    model: ChatModel, plan: ChatPlan, params: dict[str, Any], cancel: threading.Event, index: int
) -> Outcome:
    message, stats = model.reply(plan.messages, plan.tools, cancel=cancel, **params)
    spent = stats.completion_tokens
    reason = complies(plan, message)
    attempts = 1
    if reason is not None and not cancel.is_set() and stats.finish_reason != "length":
        log.info("reply did not comply (%s); asking once more", reason)
        again, stats = model.reply(correction(plan, message, reason), plan.tools, cancel=cancel, **params)
        spent += stats.completion_tokens
        attempts = 2
        if complies(plan, again) is not None:
            # Still not compliant: returned as it is (documented in docs/serving.md).
            log.warning("reply still did not comply after one retry; returning it as given")
        message = again
    normalise_json_reply(plan, message)
    _trim_calls(plan, message)
    return Outcome(index, message, stats, attempts=attempts, completion_tokens=spent)


def _trim_calls(plan: ChatPlan, message: Message) -> None:
    if not plan.parallel_tool_calls and len(message.tool_calls) > 1:
        message.tool_calls = message.tool_calls[:1]


def finish_reason(outcome: Outcome) -> str:
    if outcome.message.tool_calls:
        return "tool_calls"
    return "length" if outcome.stats.finish_reason == "length" else "stop"


def usage_of(outcomes: list[Outcome]) -> Usage:
    usage = Usage()
    if outcomes:
        usage.prompt_tokens = outcomes[0].stats.prompt_tokens
    usage.completion_tokens = sum(o.completion_tokens for o in outcomes)
    cached = sum(o.stats.reused_tokens for o in outcomes)
    usage.extra = {"prompt_tokens_details": {"cached_tokens": cached}}
    return usage


async def collect_chat(runner: Runner, request: Request, job: Job) -> list[Outcome]:
    outcomes: list[Outcome] = []
    watcher = asyncio.create_task(watch_disconnect(request, job))
    try:
        async for _, item in runner.items(job, runner.deadline()):
            if isinstance(item, Outcome):
                outcomes.append(item)
    finally:
        watcher.cancel()
    return outcomes


def chat_response(outcomes: list[Outcome], model_id: str) -> dict[str, Any]:
    choices = []
    for o in outcomes:
        wire = o.message.to_openai()
        message: dict[str, Any] = {"role": "assistant", "content": wire.get("content"), "refusal": None}
        if o.message.tool_calls:
            message["tool_calls"] = wire["tool_calls"]
        choices.append(
            {"index": o.index, "message": message, "logprobs": None, "finish_reason": finish_reason(o)}
        )
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model_id,
        "system_fingerprint": None,
        "choices": choices,
        "usage": usage_of(outcomes).to_dict(),
    }


async def stream_chat(
    job: Job,
    items: AsyncIterator[Any],
    model_id: str,
    include_usage: bool,
    buffered: bool,
) -> AsyncIterator[str]:
    """SSE lines for a chat completion from the job's ``items``.

    ``buffered``: the reply was checked before release (tool_choice / response_format), so
    its content comes in one delta at the end rather than token by token.
    """
    cid = f"chatcmpl-{uuid.uuid4().hex}"
    created = int(time.time())

    def chunk(index: int, delta: dict[str, Any], finish: str | None = None) -> str:
        body: dict[str, Any] = {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model_id,
            "system_fingerprint": None,
            "choices": [{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        if include_usage:
            body["usage"] = None
        return sse(body)

    outcomes: list[Outcome] = []
    started: set[int] = set()
    try:
        async for index, item in items:
            if index not in started:
                started.add(index)
                yield chunk(index, {"role": "assistant", "content": ""})
            if isinstance(item, ReplyEvent):
                if item.delta:
                    yield chunk(index, {"content": item.delta})
                continue
            outcomes.append(item)
            if buffered and item.message.content:
                yield chunk(index, {"content": item.message.content})
            for n, call in enumerate(item.message.tool_calls):
                args = call.arguments_json()
                yield chunk(
                    index,
                    {
                        "tool_calls": [
                            {
                                "index": n,
                                "id": call.id,
                                "type": "function",
                                "function": {"name": call.name, "arguments": ""},
                            }
                        ]
                    },
                )
                for at in range(0, len(args), ARGUMENT_PIECE):
                    piece = args[at : at + ARGUMENT_PIECE]
                    yield chunk(index, {"tool_calls": [{"index": n, "function": {"arguments": piece}}]})
            yield chunk(index, {}, finish_reason(item))
    except APIError as err:
        yield sse(err.body())
    except Exception as err:  # noqa: BLE001 - reported in the stream, headers are already sent
        yield sse(from_exception(err).body())
    finally:
        job.cancel.set()  # no-op when finished; stops the generation when the client left
    if include_usage:
        yield sse(
            {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model_id,
                "system_fingerprint": None,
                "choices": [],
                "usage": usage_of(outcomes).to_dict(),
            }
        )
    yield DONE




def _finish(outcomes: list[Outcome]) -> str | None:
    return finish_reason(outcomes[0]) if outcomes else None


async def _counted(items: Any, metrics: Metrics) -> Any:
    """Pass a chat job's items through, recording token usage as choices finish."""
    try:
        async for index, item in items:
            if isinstance(item, Outcome):
                metrics.record_usage(
                    item.stats.prompt_tokens if index == 0 else 0,
                    item.completion_tokens,
                    item.stats.finish_reason,
                )
            yield index, item
    finally:
        await items.aclose()
