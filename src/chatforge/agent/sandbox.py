"""Process limits for code-interpreter kernels, and the launcher that applies them.

This module owns what happens *inside* a kernel process before IPython starts:
resource limits (memory, file size, no core dumps) and the command line that starts
an ``ipykernel`` under those limits. It is run as a script (by path, not ``-m``) so
that starting a kernel does not import the rest of chatforge, and it imports only
the standard library for the same reason.

What these limits do and do not isolate is written down in ``docs/sandbox.md``.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path

_MIB = 1024 * 1024


@dataclass(frozen=True)
class KernelLimits:
    """Per-process limits applied to a kernel (and inherited by its children).

    memory_mb: cap on the kernel's data segment (``RLIMIT_DATA``: heap and private
        anonymous mappings, which is where Python and NumPy allocate). Exceeding it makes
        allocations fail, which Python reports as ``MemoryError``. ``None``: no cap.
    file_size_mb: largest file the kernel may write (``RLIMIT_FSIZE``); writing more
        fails with ``OSError: File too large``. ``None``: no cap.
    """

    memory_mb: int | None = 2048
    file_size_mb: int | None = None

    def __post_init__(self) -> None:
        for field_name in ("memory_mb", "file_size_mb"):
            value = getattr(self, field_name)
            if value is not None and value <= 0:
                raise ValueError(
                    f"KernelLimits.{field_name} must be a positive number of MiB or None, got {value}"
                )


def kernel_command(limits: KernelLimits, extra_kernel_args: list[str] | None = None) -> list[str]:
    """The argv that starts an ipykernel under ``limits``.

    ``{connection_file}`` is left as a placeholder; ``jupyter_client`` fills it in.
    """
    command = [sys.executable, str(Path(__file__).resolve())]
    if limits.memory_mb is not None:
        command += ["--memory-mb", str(limits.memory_mb)]
    if limits.file_size_mb is not None:
        command += ["--file-size-mb", str(limits.file_size_mb)]
    return [*command, "--", "-f", "{connection_file}", *(extra_kernel_args or [])]


def apply_limits(memory_mb: int | None, file_size_mb: int | None) -> None:
    """Set resource limits on the current process (soft and hard, so they cannot be raised back)."""
    import resource

    def set_limit(which: int, value: int) -> None:
        _soft, hard = resource.getrlimit(which)
        if hard != resource.RLIM_INFINITY:
            value = min(value, hard)
        resource.setrlimit(which, (value, value))

    # A crashing kernel with gigabytes mapped should not leave a core file in the session directory.
    set_limit(resource.RLIMIT_CORE, 0)
    if memory_mb is not None:
        # RLIMIT_DATA rather than RLIMIT_AS: address-space limits also count thread stacks,
        # allocator arenas and shared libraries that are reserved but never used, so a
        # useful AS limit kills the kernel at start-up while the same DATA limit does not.
        set_limit(resource.RLIMIT_DATA, memory_mb * _MIB)
    if file_size_mb is not None:
        set_limit(resource.RLIMIT_FSIZE, file_size_mb * _MIB)


def main(argv: list[str] | None = None) -> None:
    """Apply limits, then hand the remaining arguments to ipykernel."""
    parser = argparse.ArgumentParser(description="Start an ipykernel under chatforge's resource limits.")
    parser.add_argument("--memory-mb", type=int, default=None)
    parser.add_argument("--file-size-mb", type=int, default=None)
    parser.add_argument("kernel_args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    kernel_args = args.kernel_args[1:] if args.kernel_args[:1] == ["--"] else args.kernel_args

    apply_limits(args.memory_mb, args.file_size_mb)

    from ipykernel import kernelapp

    sys.argv = ["ipykernel_launcher", *kernel_args]
    kernelapp.launch_new_instance()


if __name__ == "__main__":
    # Run by path, Python put this file's directory first on sys.path; drop it so that
    # user code in the kernel cannot accidentally import chatforge's agent modules as
    # top-level `tools`, `sandbox`, ...
    if sys.path and Path(sys.path[0] or os.curdir).resolve() == Path(__file__).resolve().parent:
        sys.path.pop(0)
    main()
