"""Every environment variable chatforge reads, in one place, read when asked (never cached,
so a test or a launcher may set one at any time).

=============================  =======================================================
``CHATFORGE_HOME``             the cache: assembled and converted models, probes, and
                               the web UI's saved conversations (``ui/``)
                               (default ``~/.cache/chatforge``)
``CHATFORGE_API_KEY``          the key ``chatforge serve`` requires (``--api-key`` wins)
``CHATFORGE_REMOTE_API_KEY``   the key sent to ``--engine remote`` (``--remote-api-key`` wins)
``CHATFORGE_LLAMA_AMX``        ``0`` / ``false`` / ``no`` / ``off`` turns llama.cpp's AMX path off
``CHATFORGE_JEMALLOC``         ``0`` keeps glibc's allocator for ``chatforge train``
``LD_PRELOAD``                 read to tell whether jemalloc is loaded
``WORLD_SIZE``                 processes of a distributed training launch (torchrun, accelerate)
=============================  =======================================================
"""

from __future__ import annotations

import os
from pathlib import Path

_OFF = ("0", "false", "no", "off")


def home() -> Path:
    """``$CHATFORGE_HOME``, or ``~/.cache/chatforge``."""
    root = os.environ.get("CHATFORGE_HOME")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "chatforge"


def api_key() -> str | None:
    return os.environ.get("CHATFORGE_API_KEY") or None


def remote_api_key() -> str | None:
    return os.environ.get("CHATFORGE_REMOTE_API_KEY") or None


def llama_amx_off() -> bool:
    return os.environ.get("CHATFORGE_LLAMA_AMX", "").strip().lower() in _OFF


def jemalloc_off() -> bool:
    return os.environ.get("CHATFORGE_JEMALLOC", "1") == "0"


def ld_preload() -> str:
    return os.environ.get("LD_PRELOAD", "")


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))
