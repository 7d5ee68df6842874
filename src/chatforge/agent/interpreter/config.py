"""Settings of the code interpreter (`InterpreterConfig`), shared by every session of a
`chatforge.agent.interpreter.CodeInterpreter`, and the environment variables kernels get."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from chatforge.agent.interpreter.sandbox import KernelLimits

__all__ = ["DEFAULT_ENV_PASSTHROUGH", "THREAD_ENV_VARS", "InterpreterConfig"]

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
THREAD_ENV_VARS = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)


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
    landlock: confine each kernel with Landlock where the OS supports it: it may write
        only in its session directory and private runtime directory, read system and
        Python files but no other session's, open no outgoing TCP connections and send
        no signals outside its sandbox. ``False``: resource limits only. What each kernel
        got is in `InterpreterSession.sandbox_report`.
    allow_network: let kernels open TCP connections (only matters with ``landlock``).
    extra_read_paths: more files or directory trees kernels may read (e.g. a data set).
    extra_write_paths: more files or directory trees kernels may write, e.g. ``/dev/shm``
        for ``multiprocessing`` locks (shared by all sessions, so off by default).
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
    landlock: bool = True
    allow_network: bool = False
    extra_read_paths: tuple[Path | str, ...] = ()
    extra_write_paths: tuple[Path | str, ...] = ()

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
        for name in ("extra_read_paths", "extra_write_paths"):
            if isinstance(getattr(self, name), str | Path):
                raise ValueError(f"InterpreterConfig.{name} must be a tuple of paths, not a single path")
        if self.idle_timeout is not None and self.idle_timeout <= 0:
            raise ValueError("InterpreterConfig.idle_timeout must be positive seconds, or None to never reap")
        # Validates the limits early, with the field names the user knows.
        KernelLimits(memory_mb=self.memory_limit_mb, file_size_mb=self.file_size_limit_mb)

    @property
    def limits(self) -> KernelLimits:
        return KernelLimits(memory_mb=self.memory_limit_mb, file_size_mb=self.file_size_limit_mb)
