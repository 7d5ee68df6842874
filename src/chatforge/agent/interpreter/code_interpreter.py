"""`CodeInterpreter`: the sessions of sandboxed Python kernels under one root directory.

It hands each conversation its `InterpreterSession` (`session`), reaps idle ones, and
shuts every kernel down on `close()`, on garbage collection and at interpreter exit.

Limits enforced per execution: a wall-clock timeout (interrupt, then restart if the
kernel does not come back), a cap on output characters and images; per kernel: the
process limits of `sandbox`, Landlock confinement where the OS has it (writes only in the
session's directories, no other session's files, no outgoing TCP, no signals to the
server; `landlock`), its own process group, the session directory as working directory
and a reduced environment. ``docs/sandbox.md`` says what this does *not* isolate.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
import time
import weakref
from pathlib import Path

from chatforge.agent.interpreter.config import InterpreterConfig
from chatforge.agent.interpreter.session import InterpreterError, InterpreterSession, safe_dirname

__all__ = ["CodeInterpreter"]

logger = logging.getLogger(__name__)


class CodeInterpreter:
    """Sessions of sandboxed Python kernels, one per conversation.

    >>> with CodeInterpreter(InterpreterConfig(timeout=10)) as interpreter:   # doctest: +SKIP
    ...     result = interpreter.session("chat-1").execute("print(1 + 1)")
    ...     result.text
    '2'
    """

    def __init__(self, config: InterpreterConfig | None = None) -> None:
        self.config = config or InterpreterConfig()
        owns_root = self.config.root_dir is None
        if owns_root:
            self.root = Path(tempfile.mkdtemp(prefix="chatforge-interpreter-"))
        else:
            self.root = Path(self.config.root_dir).expanduser().resolve()  # type: ignore[arg-type]
            self.root.mkdir(parents=True, exist_ok=True)
        self._runtime_dir = self.root / ".runtime"
        self._runtime_dir.mkdir(mode=0o700, exist_ok=True)
        self._sessions: dict[str, InterpreterSession] = {}
        self._lock = threading.Lock()
        self._stop_reaper = threading.Event()
        self._reaper: threading.Thread | None = None
        # Runs on close(), on garbage collection and at interpreter exit, whichever comes first.
        self._finalizer = weakref.finalize(
            self, _shutdown, self._sessions, self._stop_reaper, self.root if owns_root else None
        )

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive

    def session(self, session_id: str = "default") -> InterpreterSession:
        """The session called ``session_id``, created (with its directory) if needed."""
        if not session_id:
            raise ValueError("session_id must be a non-empty string")
        with self._lock:
            if self.closed:
                raise InterpreterError("this CodeInterpreter is closed; create a new one")
            existing = self._sessions.get(session_id)
            if existing is not None and not existing.closed:
                return existing
            session = InterpreterSession(
                session_id, self.root / safe_dirname(session_id), self._runtime_dir, self.config
            )
            self._sessions[session_id] = session
            self._ensure_reaper()
            return session

    def sessions(self) -> list[str]:
        """Ids of open sessions."""
        with self._lock:
            return [sid for sid, s in self._sessions.items() if not s.closed]

    def close_session(self, session_id: str) -> None:
        """Shut a session's kernel down; its working directory stays until the interpreter closes."""
        with self._lock:
            session = self._sessions.pop(session_id, None)
        if session is not None:
            session.close()

    def reap_idle(self, now: float | None = None) -> list[str]:
        """Shut down kernels of sessions unused for longer than ``idle_timeout``; returns their ids.

        Reaped sessions stay usable: their next execution starts a fresh kernel (and says
        so in its result). Busy sessions are skipped.
        """
        if self.config.idle_timeout is None:
            return []
        now = time.monotonic() if now is None else now
        with self._lock:
            candidates = [
                (sid, s)
                for sid, s in self._sessions.items()
                if s.started and now - s.last_used > self.config.idle_timeout
            ]
        reaped = []
        for sid, session in candidates:
            if session.stop_idle_kernel():
                logger.info(
                    "session %r idle for more than %.0f s; kernel shut down", sid, self.config.idle_timeout
                )
                reaped.append(sid)
        return reaped

    def _ensure_reaper(self) -> None:
        if self.config.idle_timeout is None or self._reaper is not None:
            return
        interval = self.config.reap_interval or min(max(self.config.idle_timeout / 4, 1.0), 60.0)
        self._reaper = threading.Thread(
            target=_reap_loop,
            args=(weakref.ref(self), self._stop_reaper, interval),
            name="chatforge-interpreter-reaper",
            daemon=True,
        )
        self._reaper.start()

    def close(self) -> None:
        """Shut every kernel down and, for a temporary root, delete the session directories."""
        self._finalizer()

    def __enter__(self) -> CodeInterpreter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"CodeInterpreter(root={str(self.root)!r}, sessions={self.sessions()!r})"


def _reap_loop(interpreter_ref: weakref.ref[CodeInterpreter], stop: threading.Event, interval: float) -> None:
    while not stop.wait(interval):
        interpreter = interpreter_ref()
        if interpreter is None:
            return
        try:
            interpreter.reap_idle()
        except Exception:  # noqa: BLE001 - the reaper must keep running
            logger.exception("reaping idle interpreter sessions failed")
        del interpreter


def _shutdown(
    sessions: dict[str, InterpreterSession], stop_reaper: threading.Event, temp_root: Path | None
) -> None:
    stop_reaper.set()
    for session in list(sessions.values()):
        try:
            session.close()
        except Exception:  # noqa: BLE001 - keep closing the others
            logger.exception("closing interpreter session %r failed", session.session_id)
    sessions.clear()
    if temp_root is not None:
        shutil.rmtree(temp_root, ignore_errors=True)
