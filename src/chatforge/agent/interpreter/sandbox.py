"""Process limits for code-interpreter kernels, and the launcher that applies them.

This module owns what happens *inside* a kernel process before IPython starts:
resource limits (memory, file size, no core dumps), dropping Linux capabilities (for a
server run as root), Landlock confinement (files, TCP, signals; see
`chatforge.agent.interpreter.landlock`), the report of what was enforced, and the command line that
starts an ``ipykernel`` under all that. It is run as a script (by path, not ``-m``) so that starting
a kernel does not import the rest of chatforge, and it imports only the standard
library (and ``landlock.py`` next to it, by path) for the same reason.

What these limits do and do not isolate is written down in ``docs/sandbox.md``.
"""

from __future__ import annotations

import argparse
import ctypes
import importlib.util
import json
import os
import re
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from chatforge.agent.interpreter.landlock import LandlockPolicy, LandlockReport

_MIB = 1024 * 1024
_PR_CAPBSET_DROP = 24
_LINUX_CAPABILITY_VERSION_3 = 0x20080522


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


@dataclass(frozen=True)
class SandboxReport:
    """What the launcher enforced in one kernel process (`InterpreterSession.sandbox_report`).

    capabilities_dropped: the kernel started with Linux capabilities (its server runs as
        root) and dropped them all, so it cannot raise its limits or read other users' files.
    landlock: what Landlock enforces: ABI version, protections, paths, notes.
    """

    capabilities_dropped: bool
    landlock: LandlockReport

    @property
    def protections(self) -> tuple[str, ...]:
        """Names of the protections in force beyond the resource limits, e.g.
        ``("filesystem", "tcp_connect", "signals", "abstract_unix_sockets")``."""
        dropped = ("no_capabilities",) if self.capabilities_dropped else ()
        return (*self.landlock.protections, *dropped)

    def to_json(self) -> str:
        return json.dumps(
            {"capabilities_dropped": self.capabilities_dropped, "landlock": asdict(self.landlock)}, indent=1
        )

    @classmethod
    def from_json(cls, text: str) -> SandboxReport:
        # Read by the server, never by the launcher, which runs this file by path and must
        # import only the standard library and landlock.py beside it.
        from chatforge.agent.interpreter.landlock import LandlockReport

        data = json.loads(text)
        landlock = LandlockReport.from_json(json.dumps(data["landlock"]))
        return cls(capabilities_dropped=bool(data["capabilities_dropped"]), landlock=landlock)


def kernel_command(
    limits: KernelLimits,
    extra_kernel_args: list[str] | None = None,
    landlock: LandlockPolicy | None = None,
    report_path: Path | None = None,
) -> list[str]:
    """The argv that starts an ipykernel under ``limits`` and, if given, the ``landlock`` policy.

    ``report_path``: where the launcher writes, as JSON, what it enforced (`SandboxReport`). ``{connection_file}`` is left as a
    placeholder; ``jupyter_client`` fills it in.
    """
    command = [sys.executable, str(Path(__file__).resolve())]
    if limits.memory_mb is not None:
        command += ["--memory-mb", str(limits.memory_mb)]
    if limits.file_size_mb is not None:
        command += ["--file-size-mb", str(limits.file_size_mb)]
    if landlock is not None:
        command += ["--landlock", landlock.to_json()]
    if report_path is not None:
        command += ["--report", str(report_path)]
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


def _load_landlock() -> ModuleType:
    """``landlock.py`` from this directory. Run as a script, this file has no package, and
    putting its directory on ``sys.path`` would let user code import chatforge's modules
    under bare names; so it is loaded by path, under a private name."""
    name = "_chatforge_landlock"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("landlock.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def drop_capabilities() -> bool:
    """Drop every Linux capability, now and for whatever this process executes later;
    returns True if the process held any (its server runs as root) and dropped them.

    Root keeps its uid (it owns the session files the server made) but loses what makes
    it root: raising resource limits back (``CAP_SYS_RESOURCE``), reading and writing any
    file regardless of permissions (``CAP_DAC_OVERRIDE``), inspecting other processes
    (``CAP_SYS_PTRACE``), which would otherwise survive Landlock's ptrace scoping.
    """
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return False  # not Linux
    held = re.search(r"^CapPrm:\s*([0-9a-f]+)", status, re.MULTILINE)
    if held is None or int(held.group(1), 16) == 0:
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    last_cap = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    # The bounding set first (that needs CAP_SETPCAP, still held): an empty one means that
    # executing a program as root, or a setuid one, grants no capability either.
    for capability in range(last_cap + 1):
        libc.prctl(_PR_CAPBSET_DROP, capability, 0, 0, 0)
    header = (ctypes.c_uint32 * 2)(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (ctypes.c_uint32 * 6)()  # effective, permitted, inheritable (x2 words): all zero
    if libc.capset(ctypes.byref(header), ctypes.byref(data)) != 0:
        # Dropping one's own capabilities is always allowed; a seccomp filter may still refuse it.
        sys.stderr.write(f"chatforge sandbox: capabilities not dropped: {os.strerror(ctypes.get_errno())}\n")
        return False
    return True


def _kernel_tcp_ports(kernel_args: list[str]) -> tuple[int, ...]:
    """The ports of the kernel's connection file (``-f FILE``) if it talks over TCP."""
    if "-f" not in kernel_args[:-1]:
        return ()
    try:
        info = json.loads(Path(kernel_args[kernel_args.index("-f") + 1]).read_text())
    except (OSError, ValueError):
        return ()
    if info.get("transport", "tcp") != "tcp":
        return ()
    return tuple(int(value) for key, value in info.items() if key.endswith("_port") and value)


def apply_sandbox(policy_json: str | None, report_path: str | None, kernel_args: list[str]) -> SandboxReport:
    """Drop capabilities, confine this process with Landlock (best effort) and write the
    `SandboxReport` to ``report_path``; returns it.

    A kernel on TCP transport (session paths too long for Unix sockets) may still bind the
    ports in its connection file when binding is otherwise denied.

    The report file is opened *before* the restrictions, so it can be written after them
    although it lies outside the writable paths, and closed before any user code runs:
    the kernel cannot rewrite its own report.
    """
    landlock = _load_landlock()
    report_fd = None
    if report_path is not None:
        report_fd = os.open(report_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        dropped = drop_capabilities()
        if policy_json is None:
            landlock_report = landlock.LandlockReport(
                abi=landlock.abi_version(), notes=("Landlock switched off",)
            )
        else:
            policy = landlock.LandlockPolicy.from_json(policy_json)
            if policy.deny_tcp_bind:
                policy = replace(policy, bind_ports=(*policy.bind_ports, *_kernel_tcp_ports(kernel_args)))
            try:
                landlock_report = landlock.restrict_self(policy)
            except landlock.LandlockError as exc:
                # Best effort: a kernel that runs unconfined, and says so, beats no kernel.
                sys.stderr.write(f"chatforge sandbox: Landlock not applied: {exc}\n")
                landlock_report = landlock.LandlockReport(
                    abi=landlock.abi_version(), notes=(f"not applied: {exc}",)
                )
        report = SandboxReport(capabilities_dropped=dropped, landlock=landlock_report)
        if report_fd is not None:
            os.write(report_fd, report.to_json().encode())
    finally:
        if report_fd is not None:
            os.close(report_fd)
    return report


def forward_fork_output_over_unix_socket() -> None:
    """Make ipykernel forward ``print`` from forked children (``os.fork``, ``multiprocessing``
    with the fork start method) over an abstract Unix socket instead of TCP on 127.0.0.1,
    which a kernel without TCP cannot bind or connect to.

    ipykernel hard-codes that TCP pipe in two small methods of ``IOPubThread``; they are
    replaced here with the same code over ``ipc://``. With another ipykernel layout nothing is
    changed, and ipykernel warns in the kernel log that output from forked children is lost.
    An abstract socket has no path (so no length limit and nothing to clean up); Landlock's
    scoping keeps other sessions' kernels from connecting, and messages from anyone else
    are dropped without the random key the children inherit, as over TCP.
    """
    import zmq
    from ipykernel import iostream
    from zmq.eventloop.zmqstream import ZMQStream

    thread_class = getattr(iostream, "IOPubThread", None)
    if not all(
        hasattr(thread_class, name) for name in ("_setup_pipe_in", "_setup_pipe_out", "_handle_pipe_msg")
    ):
        return
    address = f"ipc://@chatforge-iopub-{os.getpid()}-{os.urandom(6).hex()}"

    def setup_pipe_in(self: Any) -> None:
        self._pipe_uuid = os.urandom(16)  # authenticates the children's messages
        pipe_in = self.socket.context.socket(zmq.PULL)
        pipe_in.linger = 0
        pipe_in.bind(address)
        self._pipe_in = ZMQStream(pipe_in, self.io_loop)
        self._pipe_in.on_recv(self._handle_pipe_msg)

    def setup_pipe_out(self: Any) -> tuple[Any, Any]:
        context = zmq.Context()  # a new context: the parent's does not survive fork
        pipe_out = context.socket(zmq.PUSH)
        pipe_out.linger = 3000
        pipe_out.connect(address)
        return context, pipe_out

    thread_class._setup_pipe_in = setup_pipe_in
    thread_class._setup_pipe_out = setup_pipe_out


def main(argv: list[str] | None = None) -> None:
    """Apply limits and Landlock, then hand the remaining arguments to ipykernel."""
    parser = argparse.ArgumentParser(description="Start an ipykernel under chatforge's resource limits.")
    parser.add_argument("--memory-mb", type=int, default=None)
    parser.add_argument("--file-size-mb", type=int, default=None)
    parser.add_argument("--landlock", default=None, help="a LandlockPolicy as JSON")
    parser.add_argument("--report", default=None, help="file to write the enforced protections to")
    parser.add_argument("kernel_args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    kernel_args = args.kernel_args[1:] if args.kernel_args[:1] == ["--"] else args.kernel_args

    apply_limits(args.memory_mb, args.file_size_mb)
    report = apply_sandbox(args.landlock, args.report, kernel_args)
    if report.landlock.tcp_connect:
        forward_fork_output_over_unix_socket()

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
