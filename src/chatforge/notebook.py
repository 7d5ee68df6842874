"""IPython/Jupyter magics: ``%load_ext chatforge`` then talk to a model in ``%%chat`` cells.

* ``%chat_model [REF] [--adapter DIR]`` loads a model (``default`` when not given).
* ``%%chat`` sends the cell as a user message and streams the reply; the conversation's
  history (and KV cache) is kept between cells. ``%%chat --system "..."`` sets the system
  prompt; ``%%chat --new`` starts over.
* ``%chat_clear`` forgets the history; ``%chat_history`` returns it as ``{role, content}`` dicts.

The model is loaded on first use, so loading the extension is instant.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from typing import Any

from chatforge.chat import load_model

log = logging.getLogger(__name__)


class ChatMagics:
    """The state behind the magics: one model and one conversation per shell."""

    def __init__(self, shell: Any) -> None:
        self.shell = shell
        self.model: Any = None
        self.session: Any = None
        self.params: dict[str, Any] = {}

    def load(self, line: str) -> None:
        parser = argparse.ArgumentParser(prog="%chat_model", add_help=False)
        parser.add_argument("ref", nargs="?", default="default")
        parser.add_argument("--adapter", default=None)
        parser.add_argument("--device", default="auto")
        parser.add_argument("--dtype", default="auto")
        args = parser.parse_args(shlex.split(line))

        self.model = load_model(args.ref, adapter=args.adapter, device=args.device, dtype=args.dtype)
        self.session = self.model.session()
        sys.stdout.write(f"chatforge: {self.model.name} loaded\n")

    def chat(self, line: str, cell: str) -> None:
        parser = argparse.ArgumentParser(prog="%%chat", add_help=False)
        parser.add_argument("--system", default=None)
        parser.add_argument("--new", action="store_true")
        parser.add_argument("--max-new-tokens", type=int, default=None)
        parser.add_argument("--temperature", type=float, default=None)
        args = parser.parse_args(shlex.split(line))
        if self.model is None:
            self.load("")
        if args.new or self.session is None:
            self.session = self.model.session()
        if args.system is not None:
            self.session.set_system(args.system)
        params = dict(self.params)
        if args.max_new_tokens is not None:
            params["max_new_tokens"] = args.max_new_tokens
        if args.temperature is not None:
            params["temperature"] = args.temperature
            params["do_sample"] = args.temperature > 0
        for event in self.session.stream(cell.strip(), **params):
            if event.delta:
                sys.stdout.write(event.delta)
                sys.stdout.flush()
            if event.message is not None:
                for call in event.message.tool_calls:
                    sys.stdout.write(f"\n[tool call] {call.name}({call.arguments_json()})")
        sys.stdout.write("\n")

    def clear(self, line: str = "") -> None:
        if self.session is not None:
            self.session.clear()

    def history(self, line: str = "") -> list[dict[str, Any]]:
        return self.session.history if self.session is not None else []


def load_ipython_extension(ipython: Any) -> None:
    """Register ``%chat_model``, ``%%chat``, ``%chat_clear`` and ``%chat_history``."""
    magics = ChatMagics(ipython)
    ipython.register_magic_function(magics.load, "line", "chat_model")
    ipython.register_magic_function(magics.chat, "cell", "chat")
    ipython.register_magic_function(magics.clear, "line", "chat_clear")
    ipython.register_magic_function(magics.history, "line", "chat_history")
    ipython.user_ns.setdefault("_chatforge_magics", magics)


def unload_ipython_extension(ipython: Any) -> None:
    ipython.user_ns.pop("_chatforge_magics", None)
