"""The installed llama-cpp-python: importing it, reading how it was built, and where
llama.cpp's own log lines go.

What this CPU and this build can do (AMX tiles, OpenMP threads, chatforge's patch) decides
how engines load a GGUF and how ``models/gguf`` quantizes one, so it sits below both and
imports nothing of chatforge.

llama.cpp writes its log (model metadata, tensor loading, vocabulary warnings) through one
callback for the process. :func:`import_llama_cpp` installs chatforge's, which writes to
stderr what :func:`set_native_logs` allows (by default warnings and errors) and keeps the
last error lines for the exception that reports the failure (:func:`take_native_errors`).
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import sys
import threading
from collections import deque
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

INSTALL_HINT = (
    "the llama.cpp engine needs llama-cpp-python: pip install 'chatforge[llama]' "
    "(or `make install`, which builds it; about 4 minutes)"
)

OPENMP_HINT = (
    "llama-cpp-python was built with OpenMP: next to PyTorch in one process it decodes about "
    "25% slower. Rebuild it with its own thread pool: CMAKE_ARGS=-DGGML_OPENMP=OFF pip install "
    "--force-reinstall --no-cache-dir --no-deps llama-cpp-python (make install does this)"
)

#: The marker ``patches/llama-cpp-python-*/amx-small-batches.patch`` compiles into the library.
PATCH_MARK = b"chatforge-llama-patch: amx-small-batches-1"


class LlamaCppMissingError(RuntimeError):
    """llama-cpp-python is not installed; the message says how to install it."""


def import_llama_cpp() -> Any:
    try:
        import llama_cpp
    except ImportError as err:
        raise LlamaCppMissingError(f"{INSTALL_HINT} ({err})") from None
    _route_native_logs(llama_cpp)
    return llama_cpp


# -- llama.cpp's own log ------------------------------------------------------------
# ggml_log_level in the ggml.h that llama-cpp-python 0.3.x vendors. llama-cpp-python's
# own callback (llama_cpp/_logger.py) still reads the older numbering, in which WARN was 2
# and ERROR 3: it prints warnings as errors and drops errors as debug lines, so chatforge
# installs its own.
GGML_LOG_DEBUG, GGML_LOG_INFO, GGML_LOG_WARN, GGML_LOG_ERROR, GGML_LOG_CONT = 1, 2, 3, 4, 5

#: What :func:`set_native_logs` accepts: every line, warnings and errors, or none.
NATIVE_LOG_LEVELS = ("all", "warnings", "none")

_native = {"level": "warnings", "last": GGML_LOG_INFO}
_errors: deque[str] = deque(maxlen=16)
_errors_lock = threading.Lock()
_callback: Any = None  # the ctypes function llama.cpp calls; referenced here so it is never freed


def set_native_logs(level: str) -> None:
    """What llama.cpp may write to stderr from now on: ``all`` its lines, only ``warnings``
    and errors (the default), or ``none``. Error lines are kept either way, for
    :func:`take_native_errors`."""
    if level not in NATIVE_LOG_LEVELS:
        raise ValueError(f"native log level must be one of {', '.join(NATIVE_LOG_LEVELS)}, got {level!r}")
    _native["level"] = level


def native_logs() -> str:
    return _native["level"]


def take_native_errors() -> str:
    """llama.cpp's error lines since the last call, joined into one line ('' if none)."""
    with _errors_lock:
        lines = [line.strip() for line in "".join(_errors).splitlines() if line.strip()]
        _errors.clear()
    return "; ".join(lines)


def _on_native_log(level: int, text: bytes | None, user_data: Any) -> None:
    # Called from llama.cpp's threads through ctypes: an exception here could only be
    # printed as a stray traceback, so none may escape.
    try:
        if level == GGML_LOG_CONT:  # the rest of the previous line
            level = _native["last"]
        else:
            _native["last"] = level
        message = (text or b"").decode("utf-8", "replace")
        if level == GGML_LOG_ERROR:
            with _errors_lock:
                _errors.append(message)
        shown = _native["level"]
        if shown == "all" or (shown == "warnings" and level in (GGML_LOG_WARN, GGML_LOG_ERROR)):
            sys.stderr.write(message)
            sys.stderr.flush()
    except Exception:  # noqa: BLE001, S110 - see above
        pass


def _route_native_logs(llama_cpp: Any) -> None:
    global _callback
    if _callback is None:
        _callback = llama_cpp.llama_log_callback(_on_native_log)
        llama_cpp.llama_log_set(_callback, ctypes.c_void_p(0))


@functools.cache
def cpu_has_amx() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_tile" in flags or "amx_int8" in flags or "amx_bf16" in flags


def system_info() -> bytes | None:
    """llama.cpp's build line (``AMX_INT8 = 1 | OPENMP = 1 | ...``), or None without it."""
    try:
        lib = import_llama_cpp()
        # A build with run-time CPU selection (GGML_BACKEND_DL, as in the container image)
        # loads its CPU backend on initialisation; before that its features are not listed.
        init = getattr(lib, "llama_backend_init", None)
        if init is not None:
            init()
        info = lib.llama_print_system_info()
    except Exception:  # noqa: BLE001 - no llama.cpp, or an old binding
        return None
    return info if isinstance(info, bytes) else str(info).encode()


@functools.cache
def built_with_amx() -> bool:
    """Whether the installed llama.cpp has its AMX matrix path compiled in (assumed when its
    build cannot be read). ``make llama-cpp LLAMA_AMX=0`` rebuilds it without on AMX CPUs."""
    info = system_info()
    return info is None or b"AMX_INT8 = 1" in info


@functools.cache
def built_with_openmp() -> bool:
    """Whether the installed llama.cpp runs its threads through OpenMP.

    PyTorch brings its own ``libgomp`` and llama.cpp then shares it: once any other thread
    of the process has run a parallel PyTorch operation (a model load, the hybrid engine's
    prefill, an embedding), libgomp counts more threads than cores and stops spinning at
    barriers, and llama.cpp's decode, which passes a barrier after every operation, slows
    down by about a quarter (docs/benchmarks.md). ``make install`` builds llama.cpp with its
    own thread pool instead (``-DGGML_OPENMP=OFF``).
    """
    info = system_info()
    return info is not None and b"OPENMP = 1" in info


@functools.cache
def warn_if_openmp() -> None:
    if built_with_openmp():
        log.warning(OPENMP_HINT)


def library_file() -> Path | None:
    """The installed llama.cpp's CPU library: the ``libggml-cpu*.so`` this process has
    loaded (a build with run-time CPU selection has one per CPU kind and loads the one
    that fits), else the one on disk, else ``libllama.so``."""
    try:
        llama_cpp = import_llama_cpp()
    except LlamaCppMissingError:
        return None
    system_info()  # a build with run-time CPU selection loads its CPU backend here
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        maps = ""
    loaded = sorted({line.split()[-1] for line in maps.splitlines() if "/libggml-cpu" in line})
    if loaded:
        return Path(loaded[0])
    lib = Path(llama_cpp.__file__).parent / "lib"
    found = sorted(lib.glob("libggml-cpu*.so*")) or sorted(lib.glob("libllama.so*"))
    return found[0] if found else None


@functools.cache
def small_batch_kernels() -> bool:
    """Whether the installed llama.cpp carries chatforge's AMX patch (``make install`` builds
    it so): 2–4-row products with Q8_0 weights through AVX512-VNNI, the tile configuration
    loaded at every call."""
    library = library_file()
    try:
        return library is not None and PATCH_MARK in library.read_bytes()
    except OSError:
        return False


def default_threads() -> int:
    """Cores available to this process (llama.cpp gains nothing from SMT siblings)."""
    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:
        available = os.cpu_count() or 1
    return max(1, available)
