"""jemalloc for training: the same process, re-executed with the allocator preloaded.

Training on CPU allocates and frees large activation tensors at every step; glibc's malloc
returns them to the OS and faults them in again. With jemalloc preloaded one epoch of LoRA on
the default model took 85 s instead of 149 s (docs/models.md). ``LD_PRELOAD`` only works for a
process that starts with it, so the command re-executes itself once, when Debian's
``libjemalloc2`` is installed and ``CHATFORGE_JEMALLOC=0`` is not set.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from chatforge import env

log = logging.getLogger(__name__)

JEMALLOC = Path("/usr/lib/x86_64-linux-gnu/libjemalloc.so.2")


def jemalloc_loaded() -> bool:
    return str(JEMALLOC) in env.ld_preload()


def reexec_with_jemalloc(argv: list[str]) -> None:
    """Replace this process with ``argv`` run under jemalloc, when that is possible and wanted.

    Returns (doing nothing) when jemalloc is missing, already loaded or turned off."""
    if env.jemalloc_off() or jemalloc_loaded() or not JEMALLOC.exists():
        return
    preload = ":".join(filter(None, [str(JEMALLOC), env.ld_preload()]))
    environment = dict(os.environ, LD_PRELOAD=preload)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *argv], environment)
