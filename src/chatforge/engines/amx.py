"""llama.cpp's AMX path: int8 tile matrix products on Intel Xeons with Advanced Matrix Extensions.

llama.cpp multiplies Q4_0, Q4_1, Q8_0, Q4_K, Q5_K, Q6_K and IQ4_XS weights with AMX tiles
(several rows) and AVX512-VNNI (one row) when it loads them into its AMX buffer type. On a
2-vCPU Xeon that decoded the default model's four sequences 2.5x as fast as a build without
the path (plain llama.cpp, docs/benchmarks.md). Three things stand between that and a working engine:

* **Builds that fault on the first tile instruction.** GCC 12 removes, as dead stores, the
  writes that fill llama.cpp's tile configuration before ``ldtilecfg`` loads it; the tiles stay
  unconfigured and the first ``tilezero`` raises SIGILL. ``make install`` builds with
  ``-fno-tree-dse -fno-dse``; a build from elsewhere may not, so before the engine uses the
  path it runs a short decode with it in a child process (:func:`path_works`), once per
  llama.cpp library and model file, and keeps the verdict in the cache directory.
* **PyTorch in the same thread.** llama.cpp loads the tile configuration once per thread;
  PyTorch's bf16 kernels (oneDNN) release the tiles after they run. A thread that runs
  llama.cpp, then PyTorch, then llama.cpp again faults. So llama.cpp's calls and PyTorch's
  passes never share a thread: an engine's batch thread runs llama.cpp only, the hybrid
  engine's prefill runs on :data:`TORCH_THREAD`, and llama.cpp calls made outside an engine
  (the benchmarks' references, probes) on :data:`LLAMA_THREAD`. (The build ``make install``
  makes loads the configuration at every call, see below; builds from elsewhere do not.)
* **Weights without an AMX kernel.** Most of the default GGUF's matrices are Q5_0, which has
  none; :func:`preferred_gguf` swaps in a copy whose Q5_0 matrices are Q8_0 with the same
  values (:mod:`chatforge.models.gguf.widen`).

``make install`` builds llama.cpp with chatforge's patch (``patches/``,
:func:`small_batch_kernels` tells): a decode step of two to four sequences multiplies Q8_0
weights with AVX512-VNNI, each block of weights loaded once for all the rows, where the
tile kernels padded the rows to 16 and stored and rescaled their sums in memory at every
block of 32 along K (four sequences: 45–50 ms a step instead of 53–58, docs/benchmarks.md);
and the tile configuration is loaded at every call.

The path is on wherever the CPU has AMX and the installed llama.cpp has it compiled in (the
Makefile builds it so on AMX CPUs), once the probe has passed for the model;
``CHATFORGE_LLAMA_AMX=0`` turns it off (llama.cpp then loads models without its extra buffer
types). Its logits are those of llama.cpp's other kernels within rounding: F16 matrices go
through an AVX-512 kernel that keeps the activations in float32, the quantized ones through
int8 tiles (perplexity within 0.3% of the generic kernels', docs/benchmarks.md).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from chatforge import env, llama_lib
from chatforge.models.embedded import cache_dir, file_key
from chatforge.models.gguf.widen import needs_widening, widened

log = logging.getLogger(__name__)

T = TypeVar("T")

PROBE_TIMEOUT = 300  # seconds; a load and two small decodes take a few
KEEP_BUILDS = 4  # llama.cpp builds whose verdicts $CHATFORGE_HOME/amx-probe.json keeps


class DedicatedThread:
    """One long-lived thread that runs the calls given to it, one at a time."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` on this thread (directly when already on it)."""
        if threading.current_thread().name.startswith(self.name):
            return fn(*args, **kwargs)
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(1, thread_name_prefix=self.name)
        return self._pool.submit(fn, *args, **kwargs).result()


LLAMA_THREAD = DedicatedThread("chatforge-llama")  # llama.cpp calls made outside an engine's batch thread
TORCH_THREAD = DedicatedThread("chatforge-torch")  # the hybrid engine's PyTorch passes


def on_llama_thread(fn: Callable[..., T]) -> Callable[..., T]:
    """Decorator: the function always runs on :data:`LLAMA_THREAD`."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        return LLAMA_THREAD.run(fn, *args, **kwargs)

    return wrapper


def enabled() -> bool:
    """Whether this CPU has AMX, the installed llama.cpp has the path compiled in, and
    ``CHATFORGE_LLAMA_AMX`` does not turn it off (``0``, ``false``, ``no``, ``off``)."""
    return not turned_off() and llama_lib.cpu_has_amx() and llama_lib.built_with_amx()


def extra_buffers_default(path: str | Path | None = None) -> bool:
    """Whether to let llama.cpp use extra buffer types (repacked and AMX weights) for the
    model at ``path``. Where the AMX path could run (an AMX CPU, a build that has it), unless
    ``CHATFORGE_LLAMA_AMX=0``, and once a child process has decoded ``path`` with it
    (:func:`path_works`; some builds crash). Elsewhere they give weights repacked for the
    CPU's vector units (Q4_0: 4 sequences decode about 10% faster on an AMX Xeon without
    AMX in the build)."""
    if not (llama_lib.cpu_has_amx() and llama_lib.built_with_amx()):
        return True
    return path is not None and enabled() and path_works(Path(path))


def extra_buffers_note(on: bool, asked: bool) -> str:
    """What the load log line says about llama.cpp's extra buffer types (the AMX path)."""
    if not on:
        if asked:
            return ", extra buffer types off"
        why = "CHATFORGE_LLAMA_AMX=0" if turned_off() else "llama.cpp's AMX path failed its check here"
        return f", extra buffer types off ({why})"
    if not (llama_lib.cpu_has_amx() and llama_lib.built_with_amx()):
        return ""
    return ", AMX path on" + (" (with chatforge's small-batch kernels)" if llama_lib.small_batch_kernels() else "")


def turned_off() -> bool:
    """Whether ``CHATFORGE_LLAMA_AMX`` turns the path off."""
    return env.llama_amx_off()


_PROBE = r"""
import sys
import llama_cpp
lib = llama_cpp
lib.llama_backend_init()
params = lib.llama_model_default_params()
params.use_extra_bufts = True
model = lib.llama_model_load_from_file(sys.argv[1].encode(), params)
if not model:
    sys.exit("could not load the model")
cparams = lib.llama_context_default_params()
cparams.n_ctx = cparams.n_batch = cparams.n_ubatch = 64
cparams.n_threads = cparams.n_threads_batch = 2
ctx = lib.llama_init_from_model(model, cparams)
batch = lib.llama_batch_init(16, 0, 1)
def decode(tokens, start):
    for j, token in enumerate(tokens):
        batch.token[j], batch.pos[j], batch.n_seq_id[j] = token, start + j, 1
        batch.seq_id[j][0], batch.logits[j] = 0, int(j == len(tokens) - 1)
    batch.n_tokens = len(tokens)
    if lib.llama_decode(ctx, batch) != 0:
        sys.exit("llama_decode failed")
decode(list(range(100, 108)), 0)  # several rows: the tile kernels
decode([108], 8)  # one row: the VNNI kernels
decode([109], 9)  # a second step on a thread that has run both
decode([110, 111, 112], 10)  # three rows: the patched build's VNNI kernel for a few rows
print("AMX OK")
"""


def _probe_file() -> Path:
    return cache_dir() / "amx-probe.json"


def path_works(gguf: Path) -> bool:
    """Whether llama.cpp decodes ``gguf`` with its AMX path without crashing here, checked
    in a child process once per (library, model file) and remembered."""
    library = llama_lib.library_file()
    if library is None:
        return False
    build = file_key(library)
    key = f"{build}:{file_key(Path(gguf))}"
    record = _probe_file()
    try:
        known = json.loads(record.read_text())
    except (OSError, ValueError):
        known = {}
    if key in known:
        return bool(known[key])
    log.info("checking llama.cpp's AMX path on %s (once)", Path(gguf).name)
    try:
        done = subprocess.run(
            [sys.executable, "-c", _PROBE, str(gguf)],
            capture_output=True,
            text=True,
            timeout=PROBE_TIMEOUT,
        )
        works = done.returncode == 0 and "AMX OK" in done.stdout
        detail = f"exit status {done.returncode}: {' '.join(done.stderr.split())[-300:]}"  # one line
    except subprocess.TimeoutExpired:
        works, detail = False, f"no answer in {PROBE_TIMEOUT} s"
    if not works:
        log.warning(
            "llama.cpp's AMX path failed on this machine (%s); using its other kernels. "
            "`make llama-cpp` rebuilds llama-cpp-python with the compiler flags that avoid this",
            detail,
        )
    # Verdicts for the last few library builds probed only (a rebuild makes the old ones
    # moot; a few are kept for venvs sharing this home with builds of their own).
    known = dict(sorted(known.items(), key=lambda item: item[0].startswith(build + ":")))
    known[key] = works
    builds = list(dict.fromkeys(k.split(":")[0] for k in known))[-KEEP_BUILDS:]
    known = {k: v for k, v in known.items() if k.split(":")[0] in builds}
    record.parent.mkdir(parents=True, exist_ok=True)
    partial = record.with_name(f".{record.name}.{os.getpid()}")
    partial.write_text(json.dumps(known, indent=1))
    os.replace(partial, record)
    return works


def preferred_gguf(gguf: Path) -> Path:
    """``gguf``, or where llama.cpp's AMX path works here and the file holds matrices it has no
    AMX kernel for, its widened copy (the same weights; :mod:`chatforge.models.gguf.widen`)."""
    if not enabled():
        return gguf
    if not needs_widening(gguf):
        return gguf
    wide = widened(gguf)
    return wide if path_works(wide) else gguf
