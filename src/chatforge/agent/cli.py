"""``chatforge chat --mode tools|code``: the agent loop in the terminal."""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path
from typing import Any

from chatforge.agent.builtin_tools import builtin_tools
from chatforge.agent.interpreter import CodeInterpreter, InterpreterConfig
from chatforge.agent.loop import Agent, EventKind
from chatforge.agent.tools import Tool, ToolRegistry
from chatforge.messages import Role


def load_tools(spec: str) -> list[Any]:
    """Tools named ``module:attr``: a Tool, a function, a list of them, or a ToolRegistry."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"--tools {spec!r}: expected MODULE:ATTR, e.g. mytools:get_weather")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"--tools {spec!r}: cannot import {module_name!r} ({err})") from None
    if not hasattr(module, attr):
        raise ValueError(f"--tools {spec!r}: module {module_name!r} has no attribute {attr!r}")
    value = getattr(module, attr)
    if isinstance(value, ToolRegistry):
        return [value.get(n) for n in value.names]
    if isinstance(value, list | tuple):
        return list(value)
    if isinstance(value, Tool) or callable(value):
        return [value]
    raise ValueError(f"--tools {spec!r}: {attr} is not a tool, a function, a list or a ToolRegistry")


def run_agent_chat(model: Any, args: argparse.Namespace, params: dict[str, Any]) -> int:
    tools: list[Any] = [*builtin_tools()] if args.mode == "tools" else []
    for spec in args.tools:
        tools += load_tools(spec)
    mode = "tools" if args.mode == "chat" else args.mode
    workdir = Path(getattr(args, "workdir", None) or "chatforge-workspace").resolve()
    interpreter = CodeInterpreter(InterpreterConfig(root_dir=workdir)) if mode == "code" else None
    agent = Agent(model, tools, mode=mode, system=args.system, interpreter=interpreter, **params)
    where = f" · files in {agent.code_session.workdir}" if interpreter else ""
    names = ", ".join(t.name if isinstance(t, Tool) else getattr(t, "__name__", "?") for t in tools)
    print(
        f"chatforge · {model.name} · mode {mode}{where}" + (f" · tools: {names}" if names else ""), flush=True
    )
    print("Commands: 'clear' starts over, 'stop' or Ctrl-D exits.", flush=True)
    try:
        while True:
            try:
                text = input("\nUser: ").strip()
            except (EOFError, KeyboardInterrupt):
                print()
                return 0
            if not text:
                continue
            if text == "stop":
                return 0
            if text == "clear":
                agent.messages = [m for m in agent.messages[:1] if m.role is Role.SYSTEM]
                agent.state.reset()
                print("(history cleared)")
                continue
            print("\nAssistant: ", end="", flush=True)
            for event in agent.stream(text):
                show(event)
            print(flush=True)
    finally:
        agent.close()
        if interpreter is not None:
            interpreter.close()


def show(event: Any) -> None:
    if event.kind is EventKind.TEXT:
        print(event.text, end="", flush=True)
    elif event.kind is EventKind.TOOL_CALL:
        print(f"\n[tool call] {event.call.name}({event.call.arguments_json()})", flush=True)
    elif event.kind is EventKind.TOOL_RESULT:
        print(f"[tool result] {event.text[:500]}", flush=True)
    elif event.kind is EventKind.CODE:
        print("\n[running code]", flush=True)
    elif event.kind is EventKind.OUTPUT:
        print(f"[output]\n{event.text[:2000]}", flush=True)
    elif event.kind is EventKind.IMAGE:
        print(f"[image: {len(event.image or b'')} bytes of PNG]", flush=True)
