"""``chatforge model fetch | path``: the embedded default model."""

from __future__ import annotations

import argparse
from typing import Any

from chatforge.engines.select import llama_cpp_available, resolve_gguf
from chatforge.models.embedded import DEFAULT, assemble_gguf, ensure_hf_dir, model_dir


def add_model_command(sub: Any) -> None:
    p = sub.add_parser("model", help="manage the embedded default model")
    msub = p.add_subparsers(dest="model_command", required=True)
    fetch = msub.add_parser("fetch", help="assemble, verify and convert the embedded default model (once)")
    fetch.set_defaults(handler=run_model_fetch)
    info = msub.add_parser("path", help="print where the embedded default model is cached")
    info.set_defaults(handler=run_model_path)


def run_model_fetch(args: argparse.Namespace) -> int:
    gguf = assemble_gguf(DEFAULT)
    hf_dir = ensure_hf_dir(DEFAULT)
    print(f"default model ready: {hf_dir} (GGUF: {gguf})")
    loaded = resolve_gguf("default") if llama_cpp_available() else gguf
    if loaded != gguf:  # prepared now rather than on the first serve (engines/amx.py)
        print(f"llama.cpp's AMX path works here: it loads {loaded}")
    return 0


def run_model_path(args: argparse.Namespace) -> int:
    print(model_dir())
    return 0
