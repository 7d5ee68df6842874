"""The web UI: one hand-written page (HTML, CSS, JS in ``static/``) served by the same app,
and the server side of its Tool and Code Interpreter modes.

Chat mode talks to the OpenAI-compatible API with streaming, so the UI exercises exactly
what clients use. Tool and Code Interpreter modes run the agent loop
(``chatforge.agent.loop``) on the server: one :class:`~chatforge.agent.loop.Agent` per
browser conversation, kept in a bounded LRU of :class:`AgentSessions` that also expires
idle ones. Routes (all behind the API key, like the API):

* ``POST /ui/agent``: run one user turn; the agent's events stream back as SSE JSON
  (``{"type": "text" | "tool_call" | "tool_result" | "code" | "output" | "image" |
  "final" | "error", ...}``, images as base64 PNG).
* ``POST /ui/upload``: put a file (JSON, base64 data) into the conversation's code session.
* ``POST /ui/clear``: forget a conversation (its agent and its kernel).

The loop blocks (generation, tools, code), so it runs as a job on a worker pool of its own
(``AgentOptions.agent_workers`` threads, a queue of ``max_sessions``): a long code execution
never takes a thread from the API's generation workers. A client that goes away cancels the
turn between steps.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import importlib.util
import json
import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles

from chatforge.serve.errors import APIError
from chatforge.serve.worker import GenerationWorker

if TYPE_CHECKING:
    from chatforge.agent.interpreter import CodeInterpreter
    from chatforge.agent.loop import Agent, AgentEvent
    from chatforge.chat import ChatModel

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
AGENT_MODES = ("tools", "code")
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
_CONVERSATION_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def agent_available() -> bool:
    return importlib.util.find_spec("chatforge.agent.loop") is not None


@dataclass
class AgentOptions:
    """How the UI's Tool and Code Interpreter modes run (``chatforge serve`` flags)."""

    tools: list[Any] = field(default_factory=list)
    """Tools offered in Tool mode besides the built-in ones (``--tools MODULE:ATTR``)."""
    workdir: Path | None = None
    """Root of the code sessions' working directories (``--workdir``); None: a temporary
    directory, deleted on shutdown."""
    code_timeout: float = 60.0
    """Seconds one code execution may run."""
    max_sessions: int = 32
    """Conversations kept on the server; the least recently used is dropped beyond this."""
    idle_timeout: float = 30 * 60.0
    """Seconds after its last use when a conversation is dropped."""
    max_rounds: int = 6
    """Default (and, times four, the ceiling of) generations per user turn."""
    max_upload_bytes: int = 25 * 1024 * 1024
    """Largest file the page may upload (it travels base64 in JSON)."""
    agent_workers: int = 4
    """Agent turns run at once. They have threads of their own, so code that runs for a minute
    never holds one of the API's generation workers; their generations join the engine's batch."""


@dataclass
class AgentSession:
    """One browser conversation's agent, and where each of its user turns starts."""

    conversation: str
    agent: Agent
    lock: threading.Lock = field(default_factory=threading.Lock)
    turns: dict[int, int] = field(default_factory=dict)
    """Page turn number -> index in ``agent.messages`` where that turn starts (turns the agent
    ran, and turns copied from the page's history)."""
    synced: int = 0
    """How many of the page's turns ``agent.messages`` holds: turns the page ran in another
    mode (chat mode goes to the API, not to this agent) are copied in before the next turn."""
    last_used: float = field(default_factory=time.monotonic)

    @property
    def mode(self) -> str:
        return self.agent.mode


class AgentSessions:
    """The server's agent sessions: a bounded LRU with idle expiry, and one shared
    :class:`CodeInterpreter` (created on first use) for their code."""

    def __init__(self, model: ChatModel, options: AgentOptions) -> None:
        self.model = model
        self.options = options
        self._sessions: OrderedDict[str, AgentSession] = OrderedDict()
        self._lock = threading.Lock()
        self._interpreter: CodeInterpreter | None = None
        self._closed = False

    @property
    def interpreter(self) -> CodeInterpreter:
        from chatforge.agent.interpreter import CodeInterpreter, InterpreterConfig

        with self._lock:
            if self._closed:
                raise RuntimeError("the server is shutting down")
            if self._interpreter is None:
                config = InterpreterConfig(
                    root_dir=self.options.workdir,
                    timeout=self.options.code_timeout,
                    max_upload_bytes=self.options.max_upload_bytes,
                    idle_timeout=self.options.idle_timeout,
                )
                self._interpreter = CodeInterpreter(config)
                log.info("code interpreter sessions live in %s", self._interpreter.root)
            return self._interpreter

    def get(self, conversation: str, mode: str) -> AgentSession:
        """The conversation's session in ``mode``; a new one when there is none or its mode differs."""
        self._expire()
        with self._lock:
            session = self._sessions.get(conversation)
            if session is not None and session.mode == mode:
                self._sessions.move_to_end(conversation)
                session.last_used = time.monotonic()
                return session
        if session is not None:  # another mode: the new agent starts from the page's history
            self._drop(conversation, session, keep_files=True)
        session = AgentSession(conversation, self._new_agent(conversation, mode))
        with self._lock:
            self._sessions[conversation] = session
            evicted = self._over_capacity()
        for sid, old in evicted:
            self._drop(sid, old)
        return session

    def clear(self, conversation: str) -> bool:
        with self._lock:
            session = self._sessions.get(conversation)
        if session is None:
            return False
        self._drop(conversation, session)
        return True

    def close(self) -> None:
        with self._lock:
            self._closed = True
            sessions = list(self._sessions.items())
            self._sessions.clear()
            interpreter, self._interpreter = self._interpreter, None
        for _, session in sessions:
            session.agent.close()
        if interpreter is not None:
            interpreter.close()

    def __len__(self) -> int:
        return len(self._sessions)

    def __contains__(self, conversation: str) -> bool:
        return conversation in self._sessions

    # -- internals -------------------------------------------------------------------
    def _new_agent(self, conversation: str, mode: str) -> Agent:
        from chatforge.agent.builtin_tools import builtin_tools
        from chatforge.agent.loop import Agent
        from chatforge.agent.tools import ToolRegistry

        if mode == "code":
            return Agent(
                self.model,
                mode="code",
                interpreter=self.interpreter,
                session_id=_code_session_id(conversation),
            )
        registry = ToolRegistry()
        for item in [*builtin_tools(), *self.options.tools]:
            registry.register(item, replace=True)  # a --tools tool may replace a built-in one
        return Agent(self.model, registry, mode="tools")

    def _over_capacity(self) -> list[tuple[str, AgentSession]]:
        """Least recently used idle sessions beyond ``max_sessions`` (called with the lock held)."""
        evicted = []
        for sid, session in list(self._sessions.items()):
            if len(self._sessions) <= self.options.max_sessions:
                break
            if not session.lock.locked():
                evicted.append((sid, self._sessions.pop(sid)))
        return evicted

    def _expire(self) -> None:
        now = time.monotonic()
        with self._lock:
            stale = [
                (sid, s)
                for sid, s in self._sessions.items()
                if now - s.last_used > self.options.idle_timeout and not s.lock.locked()
            ]
            for sid, _ in stale:
                del self._sessions[sid]
        for sid, session in stale:
            log.info("agent session %s idle for more than %.0f s; dropped", sid, self.options.idle_timeout)
            self._drop(sid, session)

    def _drop(self, conversation: str, session: AgentSession, keep_files: bool = False) -> None:
        with self._lock:
            if self._sessions.get(conversation) is session:
                del self._sessions[conversation]
            interpreter = self._interpreter
        session.agent.close()
        if not keep_files and interpreter is not None:
            interpreter.close_session(_code_session_id(conversation))


def _code_session_id(conversation: str) -> str:
    return f"ui-{conversation}"


# ----------------------------------------------------------------------------- routes


def mount_ui(app: FastAPI, model_id: str, options: AgentOptions | None = None) -> None:
    app.mount("/ui/static", StaticFiles(directory=STATIC), name="ui-static")
    options = options or AgentOptions()
    sessions = AgentSessions(app.state.model, options) if agent_available() else None
    app.state.agent_sessions = sessions  # closed by the app's lifespan on shutdown
    turns = GenerationWorker(max_queue=options.max_sessions, threads=options.agent_workers)
    app.state.agent_worker = turns  # closed by the app's lifespan on shutdown

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/ui/config", include_in_schema=False)
    async def config() -> dict[str, Any]:
        settings = app.state.settings
        return {
            "model": model_id,
            "auth": bool(settings.api_key),
            "modes": ["chat", *AGENT_MODES] if sessions is not None else ["chat"],
            "max_rounds": options.max_rounds,
            "max_upload_bytes": options.max_upload_bytes,
        }

    def require_sessions() -> AgentSessions:
        if sessions is None:
            raise APIError(
                501, "tool and code modes need the agent loop (chatforge.agent.loop), not in this build"
            )
        return sessions

    @app.post("/ui/agent", include_in_schema=False)
    async def agent(request: Request) -> StreamingResponse:
        store = require_sessions()
        turn = AgentTurn.parse(await _json_body(request), options, app.state.settings.default_max_tokens)
        session = await asyncio.to_thread(store.get, turn.conversation, turn.mode)
        if session.lock.locked():
            raise APIError(
                409, "this conversation is still answering; stop it or wait", code="conversation_busy"
            )
        try:
            job = turns.submit(lambda cancel: _run_turn(session, turn, cancel))
        except Exception as err:  # QueueFullError: the server is busy
            raise APIError(503, str(err), code="queue_full", headers={"Retry-After": "1"}) from None
        return StreamingResponse(_sse(request, job), media_type="text/event-stream", headers=SSE_HEADERS)

    @app.post("/ui/upload", include_in_schema=False)
    async def upload(request: Request) -> dict[str, Any]:
        store = require_sessions()
        length = int(request.headers.get("content-length") or 0)
        if length > options.max_upload_bytes * 4 // 3 + 4096:
            raise APIError(413, f"the file is larger than {options.max_upload_bytes} bytes", code="too_large")
        body = await _json_body(request)
        conversation = _conversation_id(body)
        name = body.get("name")
        if not isinstance(name, str) or not name:
            raise APIError(400, "name: the file name is required", param="name", code="invalid_value")
        try:
            data = base64.b64decode(str(body.get("data", "")), validate=True)
        except (binascii.Error, ValueError):
            raise APIError(
                400, "data: must be the file's bytes in base64", param="data", code="invalid_value"
            ) from None
        session = await asyncio.to_thread(store.get, conversation, "code")
        try:
            await asyncio.to_thread(session.agent.upload, name, data)
        except ValueError as err:  # a path outside the session directory, or too large
            raise APIError(400, str(err), param="name", code="invalid_value") from None
        files = await asyncio.to_thread(session.agent.code_session.files)
        return {"name": name, "size": len(data), "files": [{"name": f.name, "size": f.size} for f in files]}

    @app.post("/ui/clear", include_in_schema=False)
    async def clear(request: Request) -> dict[str, Any]:
        store = require_sessions()
        conversation = _conversation_id(await _json_body(request))
        return {"cleared": await asyncio.to_thread(store.clear, conversation)}


async def _json_body(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise APIError(400, "the request body must be JSON", code="invalid_json") from None
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object", code="invalid_json")
    return body


def _conversation_id(body: dict[str, Any]) -> str:
    conversation = body.get("conversation")
    if not isinstance(conversation, str) or not _CONVERSATION_ID.fullmatch(conversation):
        raise APIError(
            400,
            "conversation: an id of 1 to 64 letters, digits, '-' or '_' is required",
            param="conversation",
            code="invalid_value",
        )
    return conversation


# ----------------------------------------------------------------------------- one turn


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
            conversation=_conversation_id(body),
            mode=mode,
            query=query,
            history=history,
            system=system.strip() or None if isinstance(system, str) else None,
            params=generation_params(body.get("params") or {}, default_max_tokens),
            max_rounds=rounds,
        )


def generation_params(raw: dict[str, Any], default_max_tokens: int | None = None) -> dict[str, Any]:
    """``ChatModel.generate`` keyword arguments from the sidebar's settings, validated."""
    from chatforge.engines.base import SamplingParams

    params: dict[str, Any] = {}
    if raw.get("temperature") is not None:
        params["temperature"] = raw["temperature"]
        params["do_sample"] = isinstance(raw["temperature"], int | float) and raw["temperature"] > 0
    for name in ("top_p", "top_k", "repetition_penalty", "seed"):
        if raw.get(name) is not None:
            params[name] = raw[name]
    max_tokens = raw.get("max_tokens") or default_max_tokens
    if max_tokens is not None:
        params["max_new_tokens"] = max_tokens
    try:
        SamplingParams(**params)
    except (TypeError, ValueError) as err:
        raise APIError(400, f"params: {err}", param="params", code="invalid_value") from None
    return params


def _run_turn(session: AgentSession, turn: AgentTurn, cancel: threading.Event) -> Iterator[dict[str, Any]]:
    """Run one user turn on the worker thread; yields the page's event dicts.

    A turn the page sends again (Retry) or that comes after turns the server no longer
    matches replaces them; a turn that does not finish (cancelled, failed) is forgotten,
    so the conversation on the server never holds half a step.
    """
    from chatforge.agent.loop import EventKind

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
                yield event_dict(event, agent.rounds)
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
    from chatforge.messages import Message, Role

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


def event_dict(event: AgentEvent, rounds: int = 0) -> dict[str, Any]:
    """One agent event as the page's JSON event."""
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
    return out


async def _sse(request: Request, job: Any) -> AsyncIterator[str]:
    """The job's events as SSE; a client that goes away cancels it (the current step finishes)."""
    from chatforge.serve.completions import watch_disconnect

    watcher = asyncio.create_task(watch_disconnect(request, job))
    try:
        async for item in job.events():
            yield f"data: {json.dumps(item, ensure_ascii=False)}\n\n"
    except Exception as err:  # noqa: BLE001 - reported to the page, which is mid-stream
        log.exception("agent stream failed")
        yield f"data: {json.dumps({'type': 'error', 'message': str(err)})}\n\n"
    finally:
        watcher.cancel()
        job.cancel.set()
    yield "data: [DONE]\n\n"
