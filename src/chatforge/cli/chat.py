"""``chatforge chat``: talk to a model in the terminal; ``--mode tools|code`` runs the agent loop."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from chatforge.agent.interpreter.code_interpreter import CodeInterpreter
from chatforge.agent.interpreter.config import InterpreterConfig
from chatforge.agent.loop import Agent, AgentEvent, EventKind
from chatforge.agent.tools.builtin import builtin_tools
from chatforge.agent.tools.definition import Tool
from chatforge.agent.tools.registry import load_tools
from chatforge.chat import ChatModel
from chatforge.cli.args import add_model_arguments, add_sampling_arguments, load_from_args, sampling_kwargs
from chatforge.messages import Role

CHAT_HELP = (
    "Commands: 'clear' empties the history, '/system <text>' sets the system prompt, 'stop' or Ctrl-D exits."
)


def add_chat_command(sub: Any) -> None:
    p = sub.add_parser("chat", help="interactive chat in the terminal", description=CHAT_HELP)
    add_model_arguments(p)
    add_sampling_arguments(p)
    p.add_argument("--system", default=None, help="system prompt")
    p.add_argument("--mode", choices=["chat", "tools", "code"], default="chat", help="chat, tools or code")
    p.add_argument(
        "--tools", action="append", default=[], metavar="MODULE:ATTR", help="load tools (repeatable)"
    )
    p.add_argument(
        "--workdir", default=None, help="code mode: where session files go (default ./chatforge-workspace)"
    )
    p.set_defaults(handler=run_chat, quiet_logs=True)


def run_chat(args: argparse.Namespace) -> int:
    model = load_from_args(args)
    params = sampling_kwargs(args)
    if args.mode != "chat" or args.tools:
        return run_agent_chat(model, args, params)
    session = model.session(system=args.system)
    print(f"chatforge · {model.name} · {CHAT_HELP}", flush=True)
    while True:
        try:
            line = input("\nUser: ")
        except (EOFError, KeyboardInterrupt):
            print()
            return 0
        text = line.strip()
        if not text:
            continue
        if text == "stop":
            return 0
        if text == "clear":
            session.clear()
            print("(history cleared)")
            continue
        if text.startswith("/system"):
            session.set_system(text[len("/system") :].strip())
            session.state.reset()
            print("(system prompt set)")
            continue
        print("\nAssistant: ", end="", flush=True)
        try:
            for event in session.stream(text, **params):
                if event.delta:
                    print(event.delta, end="", flush=True)
                if event.message is not None and event.message.tool_calls:
                    for call in event.message.tool_calls:
                        print(f"[tool call] {call.name}({call.arguments_json()})", end="", flush=True)
        except KeyboardInterrupt:
            print("\n(interrupted)")
        print(flush=True)


def run_agent_chat(model: ChatModel, args: argparse.Namespace, params: dict[str, Any]) -> int:
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


def show(event: AgentEvent) -> None:
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
