"""The code interpreter: per-session Jupyter kernels that run model-written Python.

This module owns the kernel side of the agent's code-interpreter mode:

* `CodeInterpreter` manages sessions under one root directory, reaps idle ones and
  shuts every kernel down on `close()`, on garbage collection and at interpreter exit.
* `InterpreterSession` is one conversation's kernel (a real ``ipykernel`` started through
  ``jupyter_client``) with its own working directory, file upload and listing.
* `ExecutionResult` is everything one execution produced, in order, as typed items
  (`StreamOutput`, `TextOutput`, `ImageOutput`, `ErrorOutput`, `NoticeOutput`).

Limits enforced per execution: a wall-clock timeout (interrupt, then restart if the
kernel does not come back), a cap on output characters and images; per kernel: the
process limits of `chatforge.agent.sandbox`, its own process group, the session
directory as working directory and a reduced environment. ``docs/sandbox.md`` says what
this does *not* isolate.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import queue
import re
import shutil
import signal
import tempfile
import threading
import time
import uuid
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import IO, Any

from jupyter_client.kernelspec import KernelSpec, KernelSpecManager
from jupyter_client.manager import KernelManager

from .sandbox import KernelLimits, kernel_command
from .tools import truncation_marker

__all__ = [
    "CodeInterpreter",
    "ErrorOutput",
    "ExecutionResult",
    "FileInfo",
    "ImageOutput",
    "InterpreterConfig",
    "InterpreterError",
    "KernelStartError",
    "NoticeOutput",
    "Output",
    "StreamOutput",
    "TextOutput",
    "InterpreterSession",
]

logger = logging.getLogger(__name__)

_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_SAFE_NAME = re.compile(r"[^A-Za-z0-9_.-]")
_KERNEL_NAME = "chatforge-sandbox"
# Unix socket paths are limited to ~107 bytes; leave room for the "-<port>" suffix.
_MAX_IPC_PATH = 96
# Environment variables a kernel inherits from the host; everything else (API keys,
# tokens, proxies) stays out. Extend with InterpreterConfig.env_passthrough.
DEFAULT_ENV_PASSTHROUGH = (
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "LANG",
    "LANGUAGE",
    "LC_ALL",
    "LC_CTYPE",
    "TZ",
    "TMPDIR",
    "PYTHONPATH",
    "VIRTUAL_ENV",
)
# Thread-pool sizes of numeric libraries, set from InterpreterConfig.max_threads.
_THREAD_ENV = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)


class InterpreterError(RuntimeError):
    """A problem with the interpreter itself (not with the code it ran)."""


class KernelStartError(InterpreterError):
    """A kernel could not be started."""


def strip_ansi(text: str) -> str:
    """Remove terminal colour and cursor escape sequences."""
    return _ANSI_ESCAPE.sub("", text)


# ----------------------------------------------------------------------------- outputs


@dataclass(frozen=True)
class StreamOutput:
    """Text the code wrote to ``stdout`` or ``stderr`` (``name``)."""

    name: str
    text: str


@dataclass(frozen=True)
class TextOutput:
    """The ``text/plain`` form of a cell's value (``execute_result``) or of displayed data."""

    text: str
    source: str = "execute_result"


@dataclass(frozen=True)
class ImageOutput:
    """A PNG image the code displayed (e.g. a matplotlib figure); ``alt_text`` is its text/plain form."""

    png: bytes
    alt_text: str = ""


@dataclass(frozen=True)
class ErrorOutput:
    """An exception raised by the code, or a timeout / kernel failure reported by the interpreter."""

    ename: str
    evalue: str
    traceback: str = ""

    def __str__(self) -> str:
        return f"{self.ename}: {self.evalue}" if self.evalue else self.ename


@dataclass(frozen=True)
class NoticeOutput:
    """A note from the interpreter itself (truncation, restarts)."""

    text: str


Output = StreamOutput | TextOutput | ImageOutput | ErrorOutput | NoticeOutput


@dataclass
class ExecutionResult:
    """Everything one `InterpreterSession.execute` call produced, in order.

    timed_out: the code ran past the timeout and was interrupted.
    restarted: the kernel was restarted during this call (after a timeout it would not
        recover from, or because it died); variables and imports are gone, files stay.
    truncated: some output was left out to respect the output limits.
    """

    outputs: list[Output] = field(default_factory=list)
    timed_out: bool = False
    restarted: bool = False
    truncated: bool = False
    elapsed: float = 0.0
    execution_count: int | None = None

    @property
    def text(self) -> str:
        """All text in order; images appear as ``[Image]``."""
        parts: list[str] = []
        for item in self.outputs:
            match item:
                case StreamOutput(text=text) | TextOutput(text=text) | NoticeOutput(text=text):
                    parts.append(text)
                case ImageOutput():
                    parts.append("[Image]")
                case ErrorOutput():
                    parts.append(item.traceback or str(item))
            if parts and not parts[-1].endswith("\n"):
                parts[-1] += "\n"
        return "".join(parts).rstrip("\n")

    @property
    def images(self) -> list[bytes]:
        """PNG bytes of every image, in order."""
        return [item.png for item in self.outputs if isinstance(item, ImageOutput)]

    @property
    def error(self) -> ErrorOutput | None:
        """The last error (exception, timeout or kernel failure), or None if the code ran cleanly."""
        errors = [item for item in self.outputs if isinstance(item, ErrorOutput)]
        return errors[-1] if errors else None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class FileInfo:
    """A file in a session's working directory: path relative to it (POSIX form) and size in bytes."""

    name: str
    size: int


# ----------------------------------------------------------------------------- configuration


@dataclass
class InterpreterConfig:
    """Settings of a `CodeInterpreter`; every session uses the same ones.

    root_dir: parent of the per-session working directories. ``None``: a fresh
        temporary directory, deleted with everything in it on `CodeInterpreter.close`.
        A given directory is kept, as are the session directories in it.
    timeout: wall-clock seconds one execution may take before it is interrupted.
    interrupt_grace: seconds an interrupted kernel gets to become idle before it is restarted.
    memory_limit_mb: cap on each kernel's memory (see `KernelLimits.memory_mb`); ``None``: none.
    file_size_limit_mb: largest file a kernel may write; ``None``: none.
    max_output_chars: text characters kept per execution; the rest is replaced by a marker.
    max_images: images kept per execution.
    max_upload_bytes: largest file `InterpreterSession.upload` accepts.
    idle_timeout: seconds after its last use when a session's kernel is shut down; ``None``: never.
    reap_interval: how often the background reaper looks for idle sessions; ``None``:
        derived from ``idle_timeout``.
    startup_timeout: seconds a kernel has to start and answer.
    traceback_mode: IPython's ``xmode`` for tracebacks (``Plain``, ``Context``, ``Verbose``, ``Minimal``).
    max_threads: size of the thread pools of numeric libraries (OpenBLAS, OpenMP, MKL) in
        a kernel. Each thread reserves stack and buffers that count against the memory
        limit, so without a cap numpy's import alone grows with the machine's core count.
        ``None``: leave the libraries' defaults.
    env: extra environment variables for the kernels.
    env_passthrough: names of host environment variables the kernels inherit.
    """

    root_dir: Path | str | None = None
    timeout: float = 60.0
    interrupt_grace: float = 3.0
    memory_limit_mb: int | None = 2048
    file_size_limit_mb: int | None = None
    max_output_chars: int = 8000
    max_images: int = 8
    max_upload_bytes: int = 100 * 1024 * 1024
    idle_timeout: float | None = 30 * 60.0
    reap_interval: float | None = None
    startup_timeout: float = 60.0
    traceback_mode: str = "Plain"
    max_threads: int | None = 4
    env: Mapping[str, str] = field(default_factory=dict)
    env_passthrough: tuple[str, ...] = DEFAULT_ENV_PASSTHROUGH

    def __post_init__(self) -> None:
        for name in ("timeout", "interrupt_grace", "startup_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"InterpreterConfig.{name} must be a positive number of seconds")
        for name in ("max_output_chars", "max_upload_bytes"):
            if getattr(self, name) <= 0:
                raise ValueError(f"InterpreterConfig.{name} must be positive")
        if self.max_threads is not None and self.max_threads < 1:
            raise ValueError(
                "InterpreterConfig.max_threads must be at least 1, or None for the libraries' defaults"
            )
        if self.max_images < 0:
            raise ValueError("InterpreterConfig.max_images must be 0 or more")
        if self.idle_timeout is not None and self.idle_timeout <= 0:
            raise ValueError("InterpreterConfig.idle_timeout must be positive seconds, or None to never reap")
        # Validates the limits early, with the field names the user knows.
        KernelLimits(memory_mb=self.memory_limit_mb, file_size_mb=self.file_size_limit_mb)

    @property
    def limits(self) -> KernelLimits:
        return KernelLimits(memory_mb=self.memory_limit_mb, file_size_mb=self.file_size_limit_mb)


class _SandboxKernelSpecs(KernelSpecManager):
    """Serves one programmatic kernel spec, so that no ``ipython kernel install`` is needed."""

    def __init__(self, spec: KernelSpec, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._spec = spec

    def find_kernel_specs(self) -> dict[str, str]:
        return {_KERNEL_NAME: ""}

    def get_kernel_spec(self, kernel_name: str) -> KernelSpec:
        return self._spec


# ----------------------------------------------------------------------------- execution


class _OutputCollector:
    """Turns iopub messages into `Output` items while enforcing the output limits."""

    def __init__(self, config: InterpreterConfig) -> None:
        self.config = config
        self.outputs: list[Output] = []
        self.chars = 0
        self.dropped_chars = 0
        self.dropped_images = 0
        self.notice_index: int | None = None
        self.traceback_cut = False
        self.execution_count: int | None = None

    def add(self, msg: dict[str, Any]) -> None:
        kind = msg["msg_type"]
        content = msg["content"]
        if kind == "stream":
            self._add_text(StreamOutput(content.get("name", "stdout"), strip_ansi(content.get("text", ""))))
        elif kind in ("execute_result", "display_data", "update_display_data"):
            if kind == "execute_result":
                self.execution_count = content.get("execution_count")
            self._add_data(
                content.get("data", {}), "execute_result" if kind == "execute_result" else "display_data"
            )
        elif kind == "error":
            self.add_error(
                ErrorOutput(
                    ename=content.get("ename", "Error"),
                    evalue=strip_ansi(content.get("evalue", "")),
                    traceback=strip_ansi("\n".join(content.get("traceback", []))),
                )
            )
        elif kind == "clear_output":
            # Notebook semantics: what the code cleared is not part of the result.
            self.outputs = [item for item in self.outputs if isinstance(item, ErrorOutput)]
            self.chars = 0

    def _add_data(self, data: dict[str, Any], source: str) -> None:
        text = strip_ansi(str(data.get("text/plain", "")))
        if "image/png" in data:
            if len([o for o in self.outputs if isinstance(o, ImageOutput)]) >= self.config.max_images:
                self.dropped_images += 1
                self._mark_truncated()
                return
            png = base64.b64decode(data["image/png"])
            self.outputs.append(ImageOutput(png=png, alt_text=text))
            return
        if not text:
            text = f"[display data: {', '.join(sorted(data)) or 'empty'}]"
        self._add_text(TextOutput(text, source))

    def _add_text(self, item: StreamOutput | TextOutput) -> None:
        room = self.config.max_output_chars - self.chars
        overflow = len(item.text) - max(room, 0)
        if overflow > 0:
            self.dropped_chars += overflow
            if room <= 0:
                self._mark_truncated()
                return
            item = replace(item, text=item.text[:room])
        self.chars += len(item.text)
        last = self.outputs[-1] if self.outputs else None
        # The kernel flushes stdout in arbitrary chunks; consecutive chunks read better as one.
        if isinstance(item, StreamOutput) and isinstance(last, StreamOutput) and last.name == item.name:
            self.outputs[-1] = StreamOutput(item.name, last.text + item.text)
        else:
            self.outputs.append(item)
        if overflow > 0:
            self._mark_truncated()

    def add_error(self, error: ErrorOutput) -> None:
        # Errors are always kept (the model needs them), but a runaway traceback is cut
        # from the top: its last lines say what went wrong.
        limit = max(self.config.max_output_chars // 2, 1000)
        if len(error.traceback) > limit:
            cut = len(error.traceback) - limit
            error = ErrorOutput(
                error.ename, error.evalue, truncation_marker(cut) + "\n" + error.traceback[cut:]
            )
            self.traceback_cut = True
        self.outputs.append(error)

    def _mark_truncated(self) -> None:
        if self.notice_index is None:
            self.notice_index = len(self.outputs)

    @property
    def truncated(self) -> bool:
        return self.notice_index is not None or self.traceback_cut

    def finish(self) -> list[Output]:
        if self.notice_index is None:
            return self.outputs
        parts = []
        if self.dropped_chars:
            parts.append(truncation_marker(self.dropped_chars))
        if self.dropped_images:
            parts.append(truncation_marker(self.dropped_images, "images"))
        notice = NoticeOutput(" ".join(parts) + " (output limit reached)")
        index = min(self.notice_index, len(self.outputs))
        return [*self.outputs[:index], notice, *self.outputs[index:]]


# ----------------------------------------------------------------------------- sessions


class InterpreterSession:
    """One session's kernel and working directory.

    Created by `CodeInterpreter.session`; the kernel starts on first use. Executions in
    one session are serialised; different sessions run in parallel.
    """

    def __init__(self, session_id: str, workdir: Path, runtime_dir: Path, config: InterpreterConfig) -> None:
        self.session_id = session_id
        self.workdir = workdir
        self.config = config
        self._runtime_dir = runtime_dir
        self._lock = threading.Lock()
        self._manager: KernelManager | None = None
        self._client: Any = None
        self._log: IO[bytes] | None = None
        self._closed = False
        self._stopped_idle = False
        self.last_used = time.monotonic()
        self.workdir.mkdir(parents=True, exist_ok=True)

    # -- state

    @property
    def started(self) -> bool:
        return self._manager is not None

    @property
    def busy(self) -> bool:
        """True while an execution (or start/restart) holds the session."""
        acquired = self._lock.acquire(blocking=False)
        if acquired:
            self._lock.release()
        return not acquired

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def kernel_pid(self) -> int | None:
        """Process id of the kernel (also its process group id), or None if not running."""
        return _kernel_pid(self._manager)

    def is_alive(self) -> bool:
        return self._manager is not None and self._manager.is_alive()

    # -- kernel lifecycle

    def start(self) -> None:
        """Start the kernel now (it otherwise starts on the first `execute`)."""
        with self._lock:
            self._check_open()
            if self._manager is None:
                self._start_kernel()

    @property
    def _tmp_dir(self) -> Path:
        return self._runtime_dir / "tmp" / _safe_dirname(self.session_id)

    def _environment(self) -> dict[str, str]:
        env = {name: os.environ[name] for name in self.config.env_passthrough if name in os.environ}
        env.update(
            {
                # The inline backend renders with Agg (no display needed) and sends figures
                # as image/png display data, both for plt.show() and at the end of a cell.
                "MPLBACKEND": "module://matplotlib_inline.backend_inline",
                # Keep the user's IPython profile (startup scripts, config) out of the sandbox.
                "IPYTHONDIR": str(self._runtime_dir / "ipython"),
                "PYTHONDONTWRITEBYTECODE": "1",
                # ipykernel and user code write temporary files; keep them where close() cleans up.
                "TMPDIR": str(self._tmp_dir),
                # Silences debugpy's start-up warning about frozen modules in every kernel log.
                "PYDEVD_DISABLE_FILE_VALIDATION": "1",
            }
        )
        if self.config.max_threads is not None:
            env.update({name: str(self.config.max_threads) for name in _THREAD_ENV})
        env.update(self.config.env)
        return env

    def _start_kernel(self) -> None:
        extra_args = [
            "--HistoryManager.enabled=False",
            f"--InteractiveShell.xmode={self.config.traceback_mode}",
        ]
        spec = KernelSpec(
            argv=kernel_command(self.config.limits, extra_args),
            display_name="chatforge sandboxed Python",
            language="python",
            interrupt_mode="signal",
        )
        token = uuid.uuid4().hex[:12]
        ipc_prefix = self._runtime_dir / f"k-{token}"
        manager_kwargs: dict[str, Any] = {
            "kernel_spec_manager": _SandboxKernelSpecs(spec),
            "kernel_name": _KERNEL_NAME,
            "connection_file": str(self._runtime_dir / f"kernel-{token}.json"),
        }
        if len(str(ipc_prefix)) <= _MAX_IPC_PATH:
            # Unix sockets inside our 0700 runtime directory: no TCP port other local users could reach.
            manager_kwargs.update(transport="ipc", ip=str(ipc_prefix))
        manager = KernelManager(**manager_kwargs)
        self._tmp_dir.mkdir(parents=True, exist_ok=True)
        log_path = self._runtime_dir / f"{_safe_dirname(self.session_id)}.log"
        log = open(log_path, "ab")  # noqa: SIM115 - lives as long as the kernel
        started = time.monotonic()
        client = None
        try:
            manager.start_kernel(cwd=str(self.workdir), env=self._environment(), stdout=log, stderr=log)
            client = manager.client()
            client.start_channels()
            client.wait_for_ready(timeout=self.config.startup_timeout)
        except Exception as exc:
            try:
                if client is not None:
                    client.stop_channels()
                manager.shutdown_kernel(now=True)
            except Exception:  # noqa: BLE001 - best effort on a kernel that never came up
                logger.debug("cleanup after failed start of session %r", self.session_id, exc_info=True)
            log.close()
            tail = _tail(log_path)
            hint = ""
            if self.config.memory_limit_mb is not None:
                hint = f" If memory_limit_mb={self.config.memory_limit_mb} is too low for the kernel to start, raise it."
            raise KernelStartError(
                f"could not start the Python kernel for session {self.session_id!r}: {exc}.{hint}"
                + (f"\nKernel log ({log_path}):\n{tail}" if tail else "")
            ) from exc
        self._manager, self._client, self._log = manager, client, log
        logger.info(
            "session %r: kernel pid %s started in %.2f s (cwd %s)",
            self.session_id,
            self.kernel_pid,
            time.monotonic() - started,
            self.workdir,
        )

    def _reconnect(self) -> None:
        assert self._manager is not None
        if self._client is not None:
            self._client.stop_channels()
        self._client = self._manager.client()
        self._client.start_channels()
        self._client.wait_for_ready(timeout=self.config.startup_timeout)

    def restart(self) -> None:
        """Restart the kernel: all variables and imports are lost, files stay."""
        with self._lock:
            self._check_open()
            if self._manager is None:
                self._start_kernel()
                return
            self._restart_locked()

    def _restart_locked(self) -> None:
        assert self._manager is not None
        logger.info("session %r: restarting kernel", self.session_id)
        try:
            # now=True kills the whole process group, so children of the old kernel die with it.
            self._manager.restart_kernel(now=True)
            self._reconnect()
        except Exception as exc:
            # A kernel that cannot be restarted in place is replaced by a new one.
            logger.warning("session %r: restart failed (%s); starting a new kernel", self.session_id, exc)
            self._shutdown_locked()
            self._start_kernel()

    def interrupt(self) -> None:
        """Send an interrupt (SIGINT to the kernel's process group)."""
        if self._manager is not None:
            self._manager.interrupt_kernel()

    def close(self) -> None:
        """Shut the kernel down (killing its process group) for good. The working directory is left in place."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._shutdown_locked()

    def stop_idle_kernel(self) -> bool:
        """Shut the kernel down to free resources but keep the session usable.

        The next `execute` starts a fresh kernel and says that earlier variables are gone.
        Returns False (and does nothing) if the session is busy, closed or has no kernel.
        """
        if not self._lock.acquire(blocking=False):
            return False
        try:
            if self._closed or self._manager is None:
                return False
            self._shutdown_locked()
            self._stopped_idle = True
            return True
        finally:
            self._lock.release()

    def _shutdown_locked(self) -> None:
        manager, client, log = self._manager, self._client, self._log
        self._manager = self._client = self._log = None
        if client is not None:
            try:
                client.stop_channels()
            except Exception:  # noqa: BLE001
                logger.debug("session %r: stop_channels failed", self.session_id, exc_info=True)
        if manager is not None:
            pgid = _kernel_pid(manager)
            try:
                manager.shutdown_kernel(now=True)
            except Exception:  # noqa: BLE001 - the process group is killed below regardless
                logger.debug("session %r: shutdown_kernel failed", self.session_id, exc_info=True)
            _kill_process_group(pgid)
            logger.info("session %r: kernel shut down", self.session_id)
        if log is not None:
            log.close()
        shutil.rmtree(self._tmp_dir, ignore_errors=True)

    def _check_open(self) -> None:
        if self._closed:
            raise InterpreterError(
                f"session {self.session_id!r} is closed; ask the CodeInterpreter for a new one"
            )

    # -- execution

    def execute(self, code: str, timeout: float | None = None) -> ExecutionResult:
        """Run ``code`` in the session's kernel and return every output in order.

        Code errors, timeouts and kernel deaths come back in the result (see
        `ExecutionResult.error`); only a kernel that cannot be started raises
        (`KernelStartError`).
        """
        timeout = self.config.timeout if timeout is None else timeout
        if timeout <= 0:
            raise ValueError(f"timeout must be positive seconds, got {timeout}")
        with self._lock:
            self._check_open()
            self.last_used = time.monotonic()
            started = time.monotonic()
            collector = _OutputCollector(self.config)
            result = ExecutionResult()
            if self._manager is None:
                self._start_kernel()
                if self._stopped_idle:
                    self._stopped_idle = False
                    result.restarted = True
                    idle = self.config.idle_timeout or 0
                    collector.outputs.append(
                        NoticeOutput(
                            f"This session was idle for more than {idle:g} s, so its kernel was shut down; "
                            "variables and imports from before are gone (files in the working directory are kept)."
                        )
                    )
            elif not self._manager.is_alive():
                self._restart_locked()
                result.restarted = True
                collector.outputs.append(
                    NoticeOutput(
                        "The kernel had stopped and was restarted before this run; earlier variables are gone."
                    )
                )
            try:
                self._run(code, timeout, collector, result)
            finally:
                self.last_used = time.monotonic()
            result.outputs = collector.finish()
            result.truncated = collector.truncated
            result.execution_count = collector.execution_count
            result.elapsed = time.monotonic() - started
            return result

    async def aexecute(self, code: str, timeout: float | None = None) -> ExecutionResult:
        """`execute` for async callers (runs in a worker thread)."""
        return await asyncio.to_thread(self.execute, code, timeout)

    def _run(self, code: str, timeout: float, collector: _OutputCollector, result: ExecutionResult) -> None:
        assert self._manager is not None and self._client is not None
        client, manager = self._client, self._manager
        msg_id = client.execute(code, store_history=True, allow_stdin=False, stop_on_error=True)
        deadline = time.monotonic() + timeout
        grace_deadline: float | None = None
        interrupt_error: ErrorOutput | None = None

        while True:
            now = time.monotonic()
            if grace_deadline is None and now >= deadline:
                logger.info("session %r: execution exceeded %.3g s; interrupting", self.session_id, timeout)
                result.timed_out = True
                self.interrupt()
                grace_deadline = now + self.config.interrupt_grace
            if grace_deadline is not None and now >= grace_deadline:
                self._restart_locked()
                result.restarted = True
                collector.add_error(
                    ErrorOutput(
                        "TimeoutError",
                        f"execution took longer than {timeout:g} s and did not stop when interrupted, "
                        "so the kernel was restarted: all variables and imports were lost "
                        "(files in the working directory are kept)",
                    )
                )
                return
            wait = min(0.2, max((grace_deadline or deadline) - now, 0.01))
            try:
                msg = client.get_iopub_msg(timeout=wait)
            except queue.Empty:
                if not manager.is_alive():
                    self._handle_death(manager, collector, result)
                    return
                continue
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue  # left over from an earlier, interrupted execution
            kind = msg["msg_type"]
            if kind == "status":
                if msg["content"].get("execution_state") == "idle":
                    break
                continue
            if kind == "error" and result.timed_out and msg["content"].get("ename") == "KeyboardInterrupt":
                # Our own interrupt: report it as the timeout it is, keeping where it stopped.
                evalue = (
                    f"execution took longer than {timeout:g} s and was interrupted; "
                    "variables defined before are kept"
                )
                lines = strip_ansi("\n".join(msg["content"].get("traceback", []))).rstrip().splitlines()
                if lines and lines[-1].startswith("KeyboardInterrupt"):
                    lines.pop()
                interrupt_error = ErrorOutput(
                    "TimeoutError", evalue, "\n".join([*lines, f"TimeoutError: {evalue}"])
                )
                continue
            collector.add(msg)

        if result.timed_out:
            collector.add_error(
                interrupt_error
                or ErrorOutput(
                    "TimeoutError", f"execution took longer than {timeout:g} s and was interrupted"
                )
            )
        self._drain_shell_reply(msg_id)
        self._explain_memory_errors(collector)

    def _handle_death(
        self, manager: KernelManager, collector: _OutputCollector, result: ExecutionResult
    ) -> None:
        process = getattr(manager.provisioner, "process", None)
        code = process.poll() if process is not None else None
        how = "exited"
        if code is not None and code < 0:
            try:
                how = f"was killed by {signal.Signals(-code).name}"
            except ValueError:
                how = f"was killed by signal {-code}"
        elif code is not None:
            how = f"exited with status {code}"
        logger.warning("session %r: kernel %s during execution; restarting", self.session_id, how)
        self._restart_locked()
        result.restarted = True
        memory = ""
        if self.config.memory_limit_mb is not None:
            memory = f" (memory limit {self.config.memory_limit_mb} MB)"
        collector.add_error(
            ErrorOutput(
                "KernelDied",
                f"the Python kernel {how} while running this code, probably out of memory{memory} "
                "or a crash in native code. It was restarted: all variables and imports were lost "
                "(files in the working directory are kept)",
            )
        )

    def _explain_memory_errors(self, collector: _OutputCollector) -> None:
        if self.config.memory_limit_mb is None:
            return
        for index, item in enumerate(collector.outputs):
            if isinstance(item, ErrorOutput) and item.ename == "MemoryError":
                hint = f"out of memory: this session may use at most {self.config.memory_limit_mb} MB"
                evalue = f"{item.evalue} ({hint})" if item.evalue else hint
                collector.outputs[index] = ErrorOutput(
                    item.ename, evalue, f"{item.traceback}\n{hint}".strip()
                )

    def _drain_shell_reply(self, msg_id: str) -> None:
        # Consume the execute_reply so replies do not pile up in the client's queue.
        assert self._client is not None
        end = time.monotonic() + 1.0
        while time.monotonic() < end:
            try:
                reply = self._client.get_shell_msg(timeout=max(end - time.monotonic(), 0.01))
            except queue.Empty:
                return
            if reply.get("parent_header", {}).get("msg_id") == msg_id:
                return

    # -- files

    def _resolve(self, name: str) -> Path:
        if not name or "\x00" in name:
            raise ValueError("file name must be a non-empty relative path")
        relative = PurePosixPath(name.replace("\\", "/"))
        if relative.is_absolute() or ".." in relative.parts:
            raise ValueError(
                f"file name {name!r} must be a relative path inside the session directory (no '..')"
            )
        root = self.workdir.resolve()
        target = (root / relative).resolve()
        if not target.is_relative_to(root) or target == root:
            raise ValueError(f"file name {name!r} points outside the session directory")
        return target

    def upload(self, name: str, data: bytes | str) -> Path:
        """Store ``data`` as ``name`` (a relative path) in the working directory and return its path."""
        payload = data.encode("utf-8") if isinstance(data, str) else bytes(data)
        if len(payload) > self.config.max_upload_bytes:
            raise ValueError(
                f"file {name!r} is {len(payload)} bytes; the limit is {self.config.max_upload_bytes} "
                "(InterpreterConfig.max_upload_bytes)"
            )
        target = self._resolve(name)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(payload)
        self.last_used = time.monotonic()
        return target

    def read_file(self, name: str) -> bytes:
        """Bytes of a file in the working directory (e.g. one the code wrote)."""
        target = self._resolve(name)
        if not target.is_file():
            raise FileNotFoundError(f"no file {name!r} in session {self.session_id!r}")
        return target.read_bytes()

    def files(self) -> list[FileInfo]:
        """Files in the working directory (recursively, hidden ones and caches skipped), sorted by name."""
        root = self.workdir
        found: list[FileInfo] = []
        for path in sorted(root.rglob("*")):
            relative = path.relative_to(root)
            if any(part.startswith(".") or part == "__pycache__" for part in relative.parts):
                continue
            if path.is_file() and not path.is_symlink():
                found.append(FileInfo(relative.as_posix(), path.stat().st_size))
        return found

    def describe_files(self) -> str:
        """A one-line-per-file listing to tell the model what it can open."""
        listing = self.files()
        if not listing:
            return "The working directory is empty."
        return "Files in the working directory:\n" + "\n".join(
            f"- {f.name} ({_human_size(f.size)})" for f in listing
        )

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("running" if self.started else "not started")
        return f"InterpreterSession({self.session_id!r}, {state}, workdir={str(self.workdir)!r})"


# ----------------------------------------------------------------------------- manager


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
                session_id, self.root / _safe_dirname(session_id), self._runtime_dir, self.config
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


def _kernel_pid(manager: KernelManager | None) -> int | None:
    process = getattr(getattr(manager, "provisioner", None), "process", None)
    return process.pid if process is not None else None


def _kill_process_group(pgid: int | None) -> None:
    """SIGKILL what is left of a kernel's process group (children it started)."""
    if pgid is None or not hasattr(os, "killpg"):
        return
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _safe_dirname(session_id: str) -> str:
    """A directory name for a session id: kept if already safe, else sanitised plus a short hash."""
    cleaned = _SAFE_NAME.sub("_", session_id).lstrip(".")[:64]
    if cleaned == session_id and cleaned:
        return cleaned
    digest = uuid.uuid5(uuid.NAMESPACE_URL, session_id).hex[:8]
    return f"{cleaned or 'session'}-{digest}"


def _tail(path: Path, max_chars: int = 2000) -> str:
    try:
        return strip_ansi(path.read_text(errors="replace")[-max_chars:]).strip()
    except OSError:
        return ""


def _human_size(size: int) -> str:
    if size < 1024:
        return f"{size} B"
    value = size / 1024
    for unit in ("KB", "MB"):
        if value < 1024:
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GB"


def is_png(data: bytes) -> bool:
    """True if ``data`` starts with the PNG signature."""
    return data.startswith(_PNG_SIGNATURE)
