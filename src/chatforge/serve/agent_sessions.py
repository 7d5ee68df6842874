"""The web UI's agents: one :class:`~chatforge.agent.loop.Agent` per browser conversation,
kept in a bounded LRU that also expires idle ones, with one shared code interpreter for
their code (Tool and Code Interpreter modes)."""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chatforge.agent.interpreter.code_interpreter import CodeInterpreter
from chatforge.agent.interpreter.config import InterpreterConfig
from chatforge.agent.loop import Agent
from chatforge.agent.tools.builtin import builtin_tools
from chatforge.agent.tools.registry import ToolRegistry
from chatforge.chat import ChatModel

log = logging.getLogger(__name__)

AGENT_MODES = ("tools", "code")


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
    # The loop's answer check (an answer with unbacked numbers sent back once) is off here:
    # the page would show the answer sent back and the second one as one answer. It stays on
    # in `chatforge chat` and Agent.run, where the transcript shows both in turn.
    def _new_agent(self, conversation: str, mode: str) -> Agent:
        if mode == "code":
            return Agent(
                self.model,
                mode="code",
                interpreter=self.interpreter,
                session_id=_code_session_id(conversation),
                check_answers=False,
            )
        registry = ToolRegistry()
        for item in [*builtin_tools(), *self.options.tools]:
            registry.register(item, replace=True)  # a --tools tool may replace a built-in one
        return Agent(self.model, registry, mode="tools", check_answers=False)

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
