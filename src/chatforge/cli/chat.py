"""``chatforge chat``: talk to a model in the terminal; ``--mode tools|code`` runs the agent loop.

What the screen shows is :mod:`chatforge.cli.transcript`'s; library logs stay off it unless
``-v`` is given (``quiet_logs``, :mod:`chatforge.cli.logs`).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from chatforge.agent.interpreter.code_interpreter import CodeInterpreter
from chatforge.agent.interpreter.config import InterpreterConfig
from chatforge.agent.loop import Agent
from chatforge.agent.tools.builtin import builtin_tools
from chatforge.agent.tools.definition import Tool
from chatforge.agent.tools.registry import load_tools
from chatforge.chat import ChatModel
from chatforge.cli.args import add_model_arguments, add_sampling_arguments, load_from_args, sampling_kwargs
from chatforge.cli.transcript import AgentPrinter, call_line, read_user_line
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
            line = read_user_line()
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
                    # No tools run in plain chat: the call is shown as the model's reply.
                    for call in event.message.tool_calls:
                        print(f"\n  → {call_line(call)}", end="", flush=True)
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
    printer = AgentPrinter(image_dir=agent.code_session.workdir if interpreter else None)
    try:
        while True:
            try:
                text = read_user_line().strip()
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
            printer.start(mode)
            try:
                for event in agent.stream(text):
                    printer.show(event)
            except KeyboardInterrupt:
                # A step may be half done (a tool running, a reply not yet in the history):
                # the conversation ends here rather than go on from there.
                print("\n(interrupted)", flush=True)
                return 0
    finally:
        agent.close()
        if interpreter is not None:
            interpreter.close()
