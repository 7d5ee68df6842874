"""Starting and stopping a session's kernel process under the sandbox launcher.

Builds what `chatforge.agent.interpreter.session.InterpreterSession` needs to start one kernel:
the ``jupyter_client`` kernel manager (a programmatic kernel spec whose command is the
launcher of `chatforge.agent.interpreter.sandbox`, Unix-socket transport in the session's private
directory), the kernel's reduced environment and its Landlock policy. Also here: the warning
about Landlock protections the kernels lack, and killing what is left of a kernel's
process group.
"""

from __future__ import annotations

import logging
import os
import signal
import uuid
from pathlib import Path
from typing import Any

from jupyter_client.kernelspec import KernelSpec, KernelSpecManager
from jupyter_client.manager import KernelManager

from chatforge.agent.interpreter.config import THREAD_ENV_VARS, InterpreterConfig
from chatforge.agent.interpreter.landlock import LandlockPolicy, LandlockReport
from chatforge.agent.interpreter.outputs import strip_ansi
from chatforge.agent.interpreter.sandbox import kernel_command

# One logger for the whole code interpreter, as before it was split into modules.
logger = logging.getLogger("chatforge.agent.interpreter")

_KERNEL_NAME = "chatforge-sandbox"
# Unix socket paths are limited to ~107 bytes; leave room for the "-<port>" suffix.
_MAX_IPC_PATH = 96
# Warnings about missing Landlock protections already logged (once per process is enough).
_WARNED_UNCONFINED: set[tuple[str, ...]] = set()


class _SandboxKernelSpecs(KernelSpecManager):
    """Serves one programmatic kernel spec, so that no ``ipython kernel install`` is needed."""

    def __init__(self, spec: KernelSpec, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._spec = spec

    def find_kernel_specs(self) -> dict[str, str]:
        return {_KERNEL_NAME: ""}

    def get_kernel_spec(self, kernel_name: str) -> KernelSpec:
        return self._spec


def kernel_environment(config: InterpreterConfig, private_dir: Path, tmp_dir: Path) -> dict[str, str]:
    """The kernel's environment: the passed-through variables plus settings that keep it in its directories."""
    env = {name: os.environ[name] for name in config.env_passthrough if name in os.environ}
    env.update(
        {
            # The inline backend renders with Agg (no display needed) and sends figures
            # as image/png display data, both for plt.show() and at the end of a cell.
            "MPLBACKEND": "module://matplotlib_inline.backend_inline",
            # Keep the user's IPython and Jupyter profiles (startup scripts, config) out of
            # the sandbox, and give caches a place the kernel may write to.
            "IPYTHONDIR": str(private_dir / "ipython"),
            "JUPYTER_CONFIG_DIR": str(private_dir / "jupyter"),
            "JUPYTER_DATA_DIR": str(private_dir / "jupyter"),
            "MPLCONFIGDIR": str(private_dir / "matplotlib"),
            "XDG_CACHE_HOME": str(private_dir / "cache"),
            "PYTHONDONTWRITEBYTECODE": "1",
            # ipykernel and user code write temporary files; keep them where close() cleans up.
            "TMPDIR": str(tmp_dir),
            # Silences debugpy's start-up warning about frozen modules in every kernel log.
            "PYDEVD_DISABLE_FILE_VALIDATION": "1",
        }
    )
    if config.max_threads is not None:
        env.update({name: str(config.max_threads) for name in THREAD_ENV_VARS})
    env.update(config.env)
    return env


def landlock_policy(
    config: InterpreterConfig, workdir: Path, private_dir: Path, log_path: Path
) -> LandlockPolicy | None:
    """What the launcher confines the kernel to, or None if ``config.landlock`` is off."""
    if not config.landlock:
        return None
    return LandlockPolicy(
        read_paths=tuple(str(Path(p).expanduser()) for p in config.extra_read_paths),
        write_paths=(
            str(workdir),
            str(private_dir),
            str(log_path),  # the kernel's stdout, so /dev/stdout can be reopened
            *(str(Path(p).expanduser()) for p in config.extra_write_paths),
        ),
        # The sessions root holds every session's files; no read rule may cover it.
        private_paths=(str(workdir.parent),),
        deny_tcp_connect=not config.allow_network,
        # On TCP transport the launcher still lets the kernel bind its own ports.
        deny_tcp_bind=not config.allow_network,
    )


def sandboxed_kernel_manager(
    config: InterpreterConfig, private_dir: Path, policy: LandlockPolicy | None, report_path: Path
) -> KernelManager:
    """A kernel manager (not started) whose kernel runs under the sandbox launcher.

    Its connection file lives in ``private_dir``, and so do its Unix sockets when their path
    is short enough; the launcher writes what it enforced to ``report_path``.
    """
    extra_args = [
        "--HistoryManager.enabled=False",
        f"--InteractiveShell.xmode={config.traceback_mode}",
    ]
    token = uuid.uuid4().hex[:12]
    ipc_prefix = private_dir / f"k-{token}"
    ipc_transport = len(str(ipc_prefix)) <= _MAX_IPC_PATH
    spec = KernelSpec(
        argv=kernel_command(config.limits, extra_args, policy, report_path),
        display_name="chatforge sandboxed Python",
        language="python",
        interrupt_mode="signal",
    )
    manager_kwargs: dict[str, Any] = {
        "kernel_spec_manager": _SandboxKernelSpecs(spec),
        "kernel_name": _KERNEL_NAME,
        "connection_file": str(private_dir / f"kernel-{token}.json"),
    }
    if ipc_transport:
        # Unix sockets inside our 0700 runtime directory: no TCP port other local users could reach.
        manager_kwargs.update(transport="ipc", ip=str(ipc_prefix))
    return KernelManager(**manager_kwargs)


def warn_if_unconfined(report: LandlockReport, config: InterpreterConfig) -> None:
    """Log, once per process and gap, which Landlock protections the kernels lack."""
    wanted = {"filesystem", "signals", "abstract_unix_sockets"}
    if not config.allow_network:
        wanted.add("tcp_connect")
    missing = tuple(sorted(wanted - set(report.protections)))
    if not missing or missing in _WARNED_UNCONFINED:
        return
    _WARNED_UNCONFINED.add(missing)
    consequences = {
        "filesystem": "code can read and write every file the server's user can, other sessions' included",
        "tcp_connect": "code can open network connections",
        "signals": "code can kill the server with os.kill(os.getppid(), 9)",
        "abstract_unix_sockets": "code can connect to abstract Unix sockets of other programs",
    }
    logger.warning(
        "code interpreter kernels run WITHOUT these Landlock protections: %s (Landlock ABI %d%s). "
        "So %s. See docs/sandbox.md; InterpreterConfig(landlock=False) silences this.",
        ", ".join(missing),
        report.abi,
        "; " + "; ".join(report.notes) if report.notes else "",
        "; ".join(consequences[name] for name in missing),
    )


def kernel_pid(manager: KernelManager | None) -> int | None:
    process = getattr(getattr(manager, "provisioner", None), "process", None)
    return process.pid if process is not None else None


def kill_process_group(pgid: int | None) -> None:
    """SIGKILL what is left of a kernel's process group (children it started)."""
    if pgid is None or not hasattr(os, "killpg"):
        return
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def output_tail(path: Path, max_chars: int = 2000) -> str:
    try:
        return strip_ansi(path.read_text(errors="replace")[-max_chars:]).strip()
    except OSError:
        return ""
