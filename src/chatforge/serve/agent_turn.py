"""One user turn of the web UI's Tool and Code Interpreter modes: the validated
``POST /ui/agent`` body (`AgentTurn`), the turn run on a worker thread (`run_turn`), and each
agent event as the page's JSON (`event_dict`)."""

from __future__ import annotations

import base64
import logging
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from chatforge.agent.loop import AgentEvent, EventKind
from chatforge.engines.base import GenerationStats, SamplingParams, sampling_options
from chatforge.messages import Message, Role
from chatforge.serve.agent_sessions import AGENT_MODES, AgentOptions, AgentSession
from chatforge.serve.errors import APIError

log = logging.getLogger(__name__)

_CONVERSATION_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def conversation_id(body: dict[str, Any]) -> str:
    conversation = body.get("conversation")
    if not isinstance(conversation, str) or not _CONVERSATION_ID.fullmatch(conversation):
        raise APIError(
            400,
            "conversation: an id of 1 to 64 letters, digits, '-' or '_' is required",
            param="conversation",
            code="invalid_value",
        )
    return conversation


@dataclass
class AgentTurn:
    """A validated ``POST /ui/agent`` body."""

    conversation: str
    mode: str
    query: str
    history: list[tuple[str, str]]
    """The page's earlier turns as (role, text): seeds a new server-side agent."""
    system: str | None
    params: dict[str, Any]
    max_rounds: int

    @property
    def number(self) -> int:
        """This turn's number in the page's conversation (how many user messages came before)."""
        return sum(1 for role, _ in self.history if role == "user")

    @classmethod
    def parse(cls, body: dict[str, Any], options: AgentOptions, default_max_tokens: int | None) -> AgentTurn:
        mode = body.get("mode")
        if mode not in AGENT_MODES:
            raise APIError(400, f"mode: one of {', '.join(AGENT_MODES)}", param="mode", code="invalid_value")
        query = body.get("query")
        if not isinstance(query, str) or not query.strip():
            raise APIError(400, "query: the user's message is required", param="query", code="invalid_value")
        history = []
        for item in body.get("history") or []:
            if isinstance(item, dict) and item.get("role") in ("user", "assistant"):
                history.append((item["role"], str(item.get("content") or "")))
        system = body.get("system")
        rounds = body.get("max_rounds") or options.max_rounds
        if not isinstance(rounds, int) or not 1 <= rounds <= 4 * options.max_rounds:
            raise APIError(
                400,
                f"max_rounds: an integer from 1 to {4 * options.max_rounds}",
                param="max_rounds",
                code="invalid_value",
            )
        return cls(
            conversation=conversation_id(body),
            mode=mode,
            query=query,
            history=history,
            system=system.strip() or None if isinstance(system, str) else None,
            params=generation_params(body.get("params") or {}, default_max_tokens),
            max_rounds=rounds,
        )


def generation_params(raw: dict[str, Any], default_max_tokens: int | None = None) -> dict[str, Any]:
    """``ChatModel.generate`` keyword arguments from the sidebar's settings, validated."""
    params = sampling_options(raw, raw.get("max_tokens") or default_max_tokens)
    try:
        SamplingParams(**params)
    except (TypeError, ValueError) as err:
        raise APIError(400, f"params: {err}", param="params", code="invalid_value") from None
    return params


def run_turn(session: AgentSession, turn: AgentTurn, cancel: threading.Event) -> Iterator[dict[str, Any]]:
    """Run one user turn on the worker thread; yields the page's event dicts.

    A turn the page sends again (Retry) or that comes after turns the server no longer
    matches replaces them; a turn that does not finish (cancelled, failed) is forgotten,
    so the conversation on the server never holds half a step.
    """
    if not session.lock.acquire(blocking=False):
        yield {"type": "error", "message": "this conversation is still answering; stop it or wait"}
        return
    agent = session.agent
    start = len(agent.messages)
    try:
        _prepare(session, turn)
        start = len(agent.messages)
        agent.max_rounds = turn.max_rounds
        finished = False
        events = agent.stream(turn.query, cancel=cancel, **turn.params)
        try:
            for event in events:
                if cancel.is_set():
                    break
                yield event_dict(event, agent.rounds, agent.stats)
                finished = event.kind is EventKind.FINAL
        finally:
            events.close()
        if finished:
            session.turns[turn.number] = start
            session.synced = turn.number + 1
        else:
            del agent.messages[start:]
    except Exception as err:
        log.exception("agent turn failed")
        del agent.messages[start:]
        yield {"type": "error", "message": f"{type(err).__name__}: {err}"}
    finally:
        session.last_used = time.monotonic()
        session.lock.release()


def _prepare(session: AgentSession, turn: AgentTurn) -> None:
    """Line the agent's history up with the page's before ``turn`` runs."""
    agent = session.agent
    later = [n for n in session.turns if n >= turn.number]
    if later:  # a retry, or the page went back: drop those turns
        del agent.messages[min(session.turns[n] for n in later) :]
        for n in later:
            del session.turns[n]
    session.synced = min(session.synced, turn.number)
    # Page turns this agent has not seen (all of them for a new agent; turns answered in chat
    # mode since): copied in as text, each recorded where it starts.
    number = -1
    for role, text in turn.history:
        number += role == "user"
        if number < session.synced:
            continue
        if role == "user":
            session.turns[number] = len(agent.messages)
        if text:
            agent.messages.append(Message(Role.parse(role), text))
    session.synced = turn.number
    has_system = bool(agent.messages) and agent.messages[0].role is Role.SYSTEM
    if turn.system is not None:
        if has_system:
            agent.messages[0].content = turn.system
        else:
            agent.messages.insert(0, Message(Role.SYSTEM, turn.system))
            session.turns = {n: i + 1 for n, i in session.turns.items()}


def event_dict(event: AgentEvent, rounds: int = 0, stats: GenerationStats | None = None) -> dict[str, Any]:
    """One agent event as the page's JSON event; ``final`` carries the turn's ``timing``
    (its generations summed: tokens, seconds, decode tokens per second) when ``stats`` is given."""
    kind = str(event.kind)
    out: dict[str, Any] = {"type": kind}
    if kind == "text":
        out["text"] = event.text
    elif kind == "tool_call" and event.call is not None:
        out.update(id=event.call.id, name=event.call.name, arguments=event.call.arguments)
    elif kind == "tool_result" and event.result is not None:
        out.update(
            id=event.call.id if event.call else None,
            name=event.result.name,
            content=event.result.content,
            is_error=event.result.is_error,
            truncated=event.result.truncated,
            elapsed=round(event.result.elapsed, 4),
        )
    elif kind == "code":
        out["code"] = event.text
    elif kind == "output":
        execution = event.execution
        out.update(
            text=event.text,
            error=bool(execution is not None and not execution.ok),
            timed_out=bool(execution is not None and execution.timed_out),
        )
    elif kind == "image":
        out["png"] = base64.b64encode(event.image or b"").decode()
    elif kind == "final":
        out.update(text=event.text, rounds=rounds, stopped_by_limit=event.message is None)
        if stats is not None:
            out["timing"] = {
                "prompt_tokens": stats.prompt_tokens,
                "completion_tokens": stats.completion_tokens,
                "seconds": round(stats.prefill_seconds + stats.decode_seconds, 4),
                "tokens_per_second": round(stats.completion_tokens / stats.decode_seconds, 2)
                if stats.decode_seconds > 0
                else 0.0,
            }
    return out
