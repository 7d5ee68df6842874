"""The ``chatforge`` command: one table of commands, each a module of ``chatforge.cli`` with
an ``add_*_command(subparsers)`` that declares its options and a plain ``run_*`` function
over the parsed arguments. A command that sets ``quiet_logs`` keeps library logs off the
terminal unless ``-v`` is given (:mod:`chatforge.cli.logs`).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from typing import Any

from chatforge.cli import bench, chat, convert, learn, logs, model, serve, train
from chatforge.train.allocator import jemalloc_loaded, reexec_with_jemalloc

log = logging.getLogger("chatforge")

VERBOSE_HELP = "debug logging, and every library's log lines (llama.cpp's included)"

#: name -> the function that adds the command to the parser, in ``--help`` order.
COMMANDS: dict[str, Callable[[Any], Any]] = {
    "chat": chat.add_chat_command,
    "model": model.add_model_command,
    "serve": serve.add_serve_command,
    "convert": convert.add_convert_command,
    "train": train.add_train_command,
    "learn": learn.add_learn_command,
    "eval": train.add_eval_command,
    "export": train.add_export_command,
    "data": train.add_data_command,
    "bench": bench.add_bench_command,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chatforge", description="Run, extend and fine-tune a local chat LLM."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help=VERBOSE_HELP)
    sub = parser.add_subparsers(dest="command", required=True)
    for add in COMMANDS.values():
        add(sub)
    for command in sub.choices.values():
        # `chatforge chat -v` as well as `chatforge -v chat`; SUPPRESS keeps a -v given
        # before the command from being reset by the command's own default.
        command.add_argument(
            "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=VERBOSE_HELP
        )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if argv is None and getattr(args, "command", None) in ("train", "learn"):
        # A real command line (not a caller's argv): worth restarting under jemalloc.
        reexec_with_jemalloc(["-m", "chatforge.cli", *sys.argv[1:]])
    logs.configure(args.verbose, quiet=getattr(args, "quiet_logs", False))
    if getattr(args, "command", None) in ("train", "learn") and jemalloc_loaded():
        log.info("memory allocator: jemalloc (CHATFORGE_JEMALLOC=0 keeps glibc's)")
    try:
        handler = getattr(args, "handler", None) or args.func
        return int(handler(args) or 0)
    except (FileNotFoundError, ValueError, RuntimeError) as err:
        # Errors meant for the user carry their own explanation; no traceback needed.
        log.debug("command failed", exc_info=True)
        print(f"chatforge: error: {err}", file=sys.stderr)
        return 2
