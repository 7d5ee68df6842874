"""One code-interpreter session: its Jupyter kernel and its working directory.

`InterpreterSession` starts a real ``ipykernel`` through ``jupyter_client`` under the
launcher of `chatforge.agent.interpreter.sandbox` (resource limits, dropped capabilities, Landlock;
the kernel manager, environment and policy come from `chatforge.agent.interpreter.launch`),
runs code in it with a wall-clock timeout (interrupt, then restart), reports kernel
deaths, and handles the session's files (upload, read, listing; `chatforge.agent.interpreter.files`).
Sessions are created and reaped by `chatforge.agent.interpreter.CodeInterpreter`.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import re
import shutil
import signal
import threading
import time
import uuid
from pathlib import Path
from typing import IO, Any

from jupyter_client.manager import KernelManager

from chatforge.agent.interpreter.config import InterpreterConfig
from chatforge.agent.interpreter.files import SessionFiles
from chatforge.agent.interpreter.launch import (
    kernel_environment,
    kernel_pid,
    kill_process_group,
    landlock_policy,
    output_tail,
    sandboxed_kernel_manager,
    warn_if_unconfined,
)
from chatforge.agent.interpreter.outputs import (
    ErrorOutput,
    ExecutionResult,
    NoticeOutput,
    OutputCollector,
    strip_ansi,
)
from chatforge.agent.interpreter.sandbox import SandboxReport

__all__ = ["InterpreterError", "InterpreterSession", "KernelStartError"]

# One logger for the whole code interpreter, as before it was split into modules.
logger = logging.getLogger("chatforge.agent.interpreter")

_SAFE_NAME = re.compile(r"[^A-Za-z0-9_.-]")


class InterpreterError(RuntimeError):
    """A problem with the interpreter itself (not with the code it ran)."""


class KernelStartError(InterpreterError):
    """A kernel could not be started."""


class InterpreterSession(SessionFiles):
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
        self._sandbox_report: SandboxReport | None = None
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
        return kernel_pid(self._manager)

    def is_alive(self) -> bool:
        return self._manager is not None and self._manager.is_alive()

    # -- kernel lifecycle

    def start(self) -> None:
        """Start the kernel now (it otherwise starts on the first `execute`)."""
        with self._lock:
            self._check_open()
            if self._manager is None:
                self._start_kernel()

    def sandbox_report(self) -> SandboxReport | None:
        """What confines the running kernel: the protections in force (``report.protections``,
        e.g. ``("filesystem", "tcp_connect", "signals", ...)``) and, in ``report.landlock``,
        the Landlock ABI, the paths it may read and write, and notes on anything asked for
        but not enforced. None before the kernel has started (see `start`), or if its
        launcher wrote no report."""
        return self._sandbox_report

    # The session's private runtime directory, writable by its kernel alone: the connection
    # file and sockets, TMPDIR, and the IPython / Jupyter / matplotlib configuration and caches.
    # The ".d" keeps it from ever sharing a name with another session's log or report.
    @property
    def _private_dir(self) -> Path:
        return self._runtime_dir / f"{safe_dirname(self.session_id)}.d"

    @property
    def _tmp_dir(self) -> Path:
        return self._private_dir / "tmp"

    @property
    def _log_path(self) -> Path:
        return self._runtime_dir / f"{safe_dirname(self.session_id)}.log"

    @property
    def _report_path(self) -> Path:
        # Outside the kernel's writable paths, so code in the kernel cannot rewrite it.
        return self._runtime_dir / f"{safe_dirname(self.session_id)}.sandbox.json"

    def _start_kernel(self) -> None:
        self._private_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._tmp_dir.mkdir(parents=True, exist_ok=True)
        policy = landlock_policy(self.config, self.workdir, self._private_dir, self._log_path)
        manager = sandboxed_kernel_manager(self.config, self._private_dir, policy, self._report_path)
        log_path = self._log_path
        self._report_path.unlink(missing_ok=True)
        log = open(log_path, "ab")  # noqa: SIM115 - lives as long as the kernel
        started = time.monotonic()
        client = None
        try:
            manager.start_kernel(
                cwd=str(self.workdir),
                env=kernel_environment(self.config, self._private_dir, self._tmp_dir),
                stdout=log,
                stderr=log,
            )
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
            tail = output_tail(log_path)
            hint = ""
            if self.config.memory_limit_mb is not None:
                hint = f" If memory_limit_mb={self.config.memory_limit_mb} is too low for the kernel to start, raise it."
            if self.config.landlock:
                # e.g. "not readable: /usr (it contains the private path ...)" for a root_dir under /usr
                self._read_sandbox_report()
                if self._sandbox_report is not None and self._sandbox_report.landlock.notes:
                    hint += " Landlock: " + "; ".join(self._sandbox_report.landlock.notes) + "."
            raise KernelStartError(
                f"could not start the Python kernel for session {self.session_id!r}: {exc}.{hint}"
                + (f"\nKernel log ({log_path}):\n{tail}" if tail else "")
            ) from exc
        self._manager, self._client, self._log = manager, client, log
        self._read_sandbox_report()
        logger.info(
            "session %r: kernel pid %s started in %.2f s (cwd %s, Landlock: %s)",
            self.session_id,
            self.kernel_pid,
            time.monotonic() - started,
            self.workdir,
            ", ".join(self._sandbox_report.protections) if self._sandbox_report else "no report",
        )

    def _read_sandbox_report(self) -> None:
        """Load what the launcher enforced (it writes the report before IPython starts)."""
        try:
            self._sandbox_report = SandboxReport.from_json(self._report_path.read_text())
        except (OSError, ValueError, TypeError, KeyError) as exc:
            self._sandbox_report = None
            if self.config.landlock:
                logger.warning(
                    "session %r: no sandbox report from the kernel launcher (%s)", self.session_id, exc
                )
            return
        if self.config.landlock:
            warn_if_unconfined(self._sandbox_report.landlock, self.config)

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
            self._read_sandbox_report()
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
            pgid = kernel_pid(manager)
            try:
                manager.shutdown_kernel(now=True)
            except Exception:  # noqa: BLE001 - the process group is killed below regardless
                logger.debug("session %r: shutdown_kernel failed", self.session_id, exc_info=True)
            kill_process_group(pgid)
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
            collector = OutputCollector(self.config.max_output_chars, self.config.max_images)
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

    def _run(self, code: str, timeout: float, collector: OutputCollector, result: ExecutionResult) -> None:
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
        self, manager: KernelManager, collector: OutputCollector, result: ExecutionResult
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

    def _explain_memory_errors(self, collector: OutputCollector) -> None:
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

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("running" if self.started else "not started")
        return f"InterpreterSession({self.session_id!r}, {state}, workdir={str(self.workdir)!r})"


def safe_dirname(session_id: str) -> str:
    """A directory name for a session id: kept if already safe, else sanitised plus a short hash."""
    cleaned = _SAFE_NAME.sub("_", session_id).lstrip(".")[:64]
    if cleaned == session_id and cleaned:
        return cleaned
    digest = uuid.uuid5(uuid.NAMESPACE_URL, session_id).hex[:8]
    return f"{cleaned or 'session'}-{digest}"
