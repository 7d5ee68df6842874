"""Landlock confinement of a process: which files it may touch, whether it may open TCP
connections, and whether it may signal processes outside its own sandbox.

Landlock is a Linux security module that any unprivileged process can use to restrict
itself (and every process it starts afterwards, irreversibly). This module talks to it
through three system calls with ``ctypes`` and uses whatever the running kernel
supports ("best effort" by ABI version):

====  ======  =====================================================================
ABI   Linux   What this module uses from it
====  ======  =====================================================================
1     5.13    filesystem allow-list (read, write, execute, create, remove per directory tree)
2     5.19    renaming and linking files between allowed directories
3     6.2     truncating files
4     6.7     TCP ``connect`` and ``bind``
5     6.10    ``ioctl`` on device files
6     6.12    scoping of signals and abstract Unix sockets to the sandbox
====  ======  =====================================================================

Landlock also always stops a confined process from ``ptrace``-ing (and so from reading
``/proc/<pid>/mem``, ``environ`` or ``fd/`` of) processes outside its sandbox.

The code interpreter's kernel launcher (`chatforge.agent.interpreter.sandbox`) calls `restrict_self`
before IPython starts; ``docs/sandbox.md`` says what this covers and what it does not.
Like the launcher, this module imports only the standard library.
"""

from __future__ import annotations

import ctypes
import glob
import json
import os
import sys
from dataclasses import asdict, dataclass, field

__all__ = [
    "LandlockError",
    "LandlockPolicy",
    "LandlockReport",
    "abi_version",
    "default_read_paths",
    "restrict_self",
]

# System call numbers: the same on every architecture Linux added them for (x86-64, arm64, ...).
_SYS_CREATE_RULESET = 444
_SYS_ADD_RULE = 445
_SYS_RESTRICT_SELF = 446
_CREATE_RULESET_VERSION = 1 << 0
_RULE_PATH_BENEATH = 1
_RULE_NET_PORT = 2
_PR_SET_NO_NEW_PRIVS = 38

# Filesystem access rights (bit, first ABI that knows it).
FS_EXECUTE = 1 << 0
FS_WRITE_FILE = 1 << 1
FS_READ_FILE = 1 << 2
FS_READ_DIR = 1 << 3
FS_REMOVE_DIR = 1 << 4
FS_REMOVE_FILE = 1 << 5
FS_MAKE_CHAR = 1 << 6
FS_MAKE_DIR = 1 << 7
FS_MAKE_REG = 1 << 8
FS_MAKE_SOCK = 1 << 9
FS_MAKE_FIFO = 1 << 10
FS_MAKE_BLOCK = 1 << 11
FS_MAKE_SYM = 1 << 12
FS_REFER = 1 << 13  # ABI 2
FS_TRUNCATE = 1 << 14  # ABI 3
FS_IOCTL_DEV = 1 << 15  # ABI 5
NET_BIND_TCP = 1 << 0  # ABI 4
NET_CONNECT_TCP = 1 << 1  # ABI 4
SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0  # ABI 6
SCOPE_SIGNAL = 1 << 1  # ABI 6

_FS_BY_ABI = {1: (1 << 13) - 1, 2: (1 << 14) - 1, 3: (1 << 15) - 1, 4: (1 << 15) - 1}
_FS_ALL = (1 << 16) - 1  # ABI 5 and later
# Rights that make sense on a regular file or device (the others only apply to directories).
_FS_FILE_RIGHTS = FS_EXECUTE | FS_WRITE_FILE | FS_READ_FILE | FS_TRUNCATE | FS_IOCTL_DEV
_FS_READ = FS_EXECUTE | FS_READ_FILE | FS_READ_DIR
# Everything but creating device nodes (which needs CAP_MKNOD anyway).
_FS_WRITE = _FS_ALL & ~(FS_MAKE_CHAR | FS_MAKE_BLOCK)
_FS_DEVICE = FS_READ_FILE | FS_WRITE_FILE | FS_TRUNCATE | FS_IOCTL_DEV

# What a Python process needs from the system: shared libraries, executables, data files
# (/usr/share: fonts, zoneinfo), and the few files in /etc that libc, Python and SSL read.
# The rest of /etc stays closed: it holds secrets (shadow, SSH host keys) when run as root.
_SYSTEM_DIRS = ("/usr", "/lib", "/lib64", "/lib32", "/bin", "/sbin")
_ETC_ENTRIES = (
    "ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime", "timezone", "passwd", "group",
    "nsswitch.conf", "hosts", "host.conf", "resolv.conf", "gai.conf", "services", "protocols",
    "mime.types", "ssl", "pki", "ca-certificates", "ca-certificates.conf", "os-release",
    "fonts", "matplotlibrc", "alternatives", "python3*", "jupyter", "ipython",
)  # fmt: skip
_READ_ONLY_DEVICES = ("/dev/urandom", "/dev/random")
_READ_WRITE_DEVICES = ("/dev/null", "/dev/zero", "/dev/full")
# Read-only pseudo-filesystems: CPU counts, memory info, /proc/self. Other processes'
# memory, environment and open files stay closed through Landlock's ptrace scoping.
_PSEUDO_FS = ("/proc", "/sys")


class LandlockError(OSError):
    """Landlock was available but the restriction could not be applied."""


@dataclass(frozen=True)
class LandlockPolicy:
    """What a confined process may do. Paths that do not exist are skipped.

    read_paths: directory trees (or files) it may read and execute, on top of
        `default_read_paths`.
    write_paths: directory trees (or files) it may read, write, create and delete in.
    private_paths: trees that must stay closed: a read or write path that contains one of
        them (say ``/home/me`` when the sessions live in ``/home/me/work``) is dropped, since
        Landlock can only allow, never carve out. Paths *inside* them may be allowed.
    deny_tcp_connect: refuse outgoing TCP connections, to any address (ABI 4).
    deny_tcp_bind: refuse binding TCP ports, so no listening servers (ABI 4), except
        ``bind_ports``.
    bind_ports: TCP ports that may still be bound, e.g. a Jupyter kernel's own ZMQ ports.
    scope_signals: refuse signals to processes outside the sandbox, such as the parent (ABI 6).
    scope_abstract_unix_sockets: refuse connections to abstract Unix sockets created
        outside the sandbox (ABI 6).
    max_abi: use at most this ABI version, as on an older kernel (tests use it to check
        what happens there); ``None``: all the running kernel offers.
    """

    read_paths: tuple[str, ...] = ()
    write_paths: tuple[str, ...] = ()
    private_paths: tuple[str, ...] = ()
    deny_tcp_connect: bool = True
    deny_tcp_bind: bool = False
    bind_ports: tuple[int, ...] = ()
    scope_signals: bool = True
    scope_abstract_unix_sockets: bool = True
    max_abi: int | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> LandlockPolicy:
        data = json.loads(text)
        for name in ("read_paths", "write_paths", "private_paths", "bind_ports"):
            data[name] = tuple(data.get(name, ()))
        return cls(**data)


@dataclass(frozen=True)
class LandlockReport:
    """What `restrict_self` actually enforced.

    abi: the Landlock ABI version of the running kernel (0: Landlock unavailable).
    filesystem, tcp_connect, tcp_bind, signals, abstract_unix_sockets: whether that
        restriction is in force.
    read_paths / write_paths: the rules that were added (resolved paths).
    notes: why something asked for is not enforced, and paths that were dropped.
    """

    abi: int = 0
    filesystem: bool = False
    tcp_connect: bool = False
    tcp_bind: bool = False
    signals: bool = False
    abstract_unix_sockets: bool = False
    read_paths: tuple[str, ...] = ()
    write_paths: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def protections(self) -> tuple[str, ...]:
        """Names of the restrictions in force, e.g. ``("filesystem", "tcp_connect", "signals")``."""
        names = ("filesystem", "tcp_connect", "tcp_bind", "signals", "abstract_unix_sockets")
        return tuple(name for name in names if getattr(self, name))

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> LandlockReport:
        data = json.loads(text)
        for name in ("read_paths", "write_paths", "notes"):
            data[name] = tuple(data.get(name, ()))
        return cls(**data)


class _RulesetAttr(ctypes.Structure):
    _fields_ = [
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    ]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1  # the kernel's struct is __attribute__((packed))
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


class _NetPortAttr(ctypes.Structure):
    _fields_ = [("allowed_access", ctypes.c_uint64), ("port", ctypes.c_uint64)]


def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    return libc


def _check(result: int, what: str) -> int:
    if result < 0:
        code = ctypes.get_errno()
        raise LandlockError(code, f"{what}: {os.strerror(code)}")
    return result


def abi_version() -> int:
    """The Landlock ABI version the running kernel offers; 0 if it has none (or is not Linux)."""
    if not sys.platform.startswith("linux"):
        return 0
    try:
        libc = _libc()
    except OSError:
        return 0
    version = libc.syscall(
        _SYS_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(_CREATE_RULESET_VERSION)
    )
    return max(int(version), 0)


def default_read_paths() -> list[str]:
    """Paths a Python process needs to read: system libraries and tools, the few files in
    /etc that libc and SSL use, /proc and /sys, and this interpreter's installation (its
    prefixes and every ``sys.path`` entry, so installed and editable packages import)."""
    paths: list[str] = [*_SYSTEM_DIRS, *_PSEUDO_FS, *_READ_ONLY_DEVICES]
    for entry in _ETC_ENTRIES:
        paths.extend(sorted(glob.glob(os.path.join("/etc", entry))))
    prefixes = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    paths.extend(sorted(prefixes))
    paths.append(os.path.dirname(os.path.realpath(sys.executable)))
    paths.extend(entry for entry in sys.path if entry)
    return paths


def _contains(outer: str, inner: str) -> bool:
    return inner == outer or inner.startswith(outer.rstrip("/") + "/")


def _add_rule(libc: ctypes.CDLL, ruleset_fd: int, path: str, access: int) -> str | None:
    """Allow ``access`` beneath ``path``; returns the resolved path, or None if it does not exist."""
    try:
        # O_PATH follows symlinks, so the rule lands on the target (e.g. /lib -> usr/lib).
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return None
    try:
        if not os.path.isdir(f"/proc/self/fd/{fd}"):
            access &= _FS_FILE_RIGHTS
        attr = _PathBeneathAttr(allowed_access=access, parent_fd=fd)
        _check(
            libc.syscall(_SYS_ADD_RULE, ctypes.c_int(ruleset_fd), ctypes.c_int(_RULE_PATH_BENEATH),
                         ctypes.byref(attr), ctypes.c_uint32(0)),
            f"landlock_add_rule({path!r})",
        )  # fmt: skip
    finally:
        os.close(fd)
    return os.path.realpath(path)


def restrict_self(policy: LandlockPolicy) -> LandlockReport:
    """Confine the calling process (and every process it starts) to ``policy``, as far as
    the running kernel supports it; returns what is enforced.

    Call it while the process has a single thread: Landlock restricts the calling thread
    and the threads and processes it creates afterwards. Raises `LandlockError` only when
    Landlock is available and applying it failed; then nothing is restricted.
    """
    abi = abi_version()
    if policy.max_abi is not None:
        abi = min(abi, policy.max_abi)
    if abi < 1:
        return LandlockReport(
            notes=("Landlock is not available in this kernel (Linux 5.13+ with landlock in the LSM list)",)
        )
    notes: list[str] = []
    handled_fs = _FS_BY_ABI.get(abi, _FS_ALL)
    handled_net = 0
    if abi >= 4:
        handled_net = (NET_CONNECT_TCP if policy.deny_tcp_connect else 0) | (
            NET_BIND_TCP if policy.deny_tcp_bind else 0
        )
    elif policy.deny_tcp_connect or policy.deny_tcp_bind:
        notes.append(f"TCP restrictions need Landlock ABI 4 (Linux 6.7); this kernel has ABI {abi}")
    scoped = 0
    if abi >= 6:
        scoped = (SCOPE_SIGNAL if policy.scope_signals else 0) | (
            SCOPE_ABSTRACT_UNIX_SOCKET if policy.scope_abstract_unix_sockets else 0
        )
    elif policy.scope_signals or policy.scope_abstract_unix_sockets:
        notes.append(
            f"signal and abstract-socket scoping need Landlock ABI 6 (Linux 6.12); this kernel has ABI {abi}"
        )

    libc = _libc()
    attr = _RulesetAttr(handled_access_fs=handled_fs, handled_access_net=handled_net, scoped=scoped)
    ruleset_fd = _check(
        libc.syscall(_SYS_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr)), ctypes.c_uint32(0)),
        "landlock_create_ruleset",
    )  # fmt: skip
    try:
        private = [os.path.realpath(p) for p in policy.private_paths]
        read_added: list[str] = []
        for path in [*default_read_paths(), *policy.read_paths]:
            resolved = os.path.realpath(path)
            if any(_contains(resolved, inner) for inner in private):
                notes.append(f"not readable: {resolved} (it contains the private path it would expose)")
                continue
            if resolved not in read_added and _add_rule(libc, ruleset_fd, path, _FS_READ & handled_fs):
                read_added.append(resolved)
        for device in _READ_WRITE_DEVICES:
            _add_rule(libc, ruleset_fd, device, _FS_DEVICE & handled_fs)
        write_added: list[str] = []
        for path in policy.write_paths:
            resolved = os.path.realpath(path)
            if any(_contains(resolved, inner) for inner in private):
                notes.append(f"not writable: {resolved} (it contains the private path it would expose)")
            elif _add_rule(libc, ruleset_fd, path, _FS_WRITE & handled_fs):
                write_added.append(resolved)
        if handled_net & NET_BIND_TCP:
            for port in policy.bind_ports:
                rule = _NetPortAttr(allowed_access=NET_BIND_TCP, port=port)
                _check(
                    libc.syscall(_SYS_ADD_RULE, ctypes.c_int(ruleset_fd), ctypes.c_int(_RULE_NET_PORT),
                                 ctypes.byref(rule), ctypes.c_uint32(0)),
                    f"landlock_add_rule(bind port {port})",
                )  # fmt: skip
        _check(libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")
        _check(
            libc.syscall(_SYS_RESTRICT_SELF, ctypes.c_int(ruleset_fd), ctypes.c_uint32(0)),
            "landlock_restrict_self",
        )
    finally:
        os.close(ruleset_fd)
    return LandlockReport(
        abi=abi,
        filesystem=True,
        tcp_connect=bool(handled_net & NET_CONNECT_TCP),
        tcp_bind=bool(handled_net & NET_BIND_TCP),
        signals=bool(scoped & SCOPE_SIGNAL),
        abstract_unix_sockets=bool(scoped & SCOPE_ABSTRACT_UNIX_SOCKET),
        read_paths=tuple(read_added),
        write_paths=tuple(write_added),
        notes=tuple(notes),
    )
