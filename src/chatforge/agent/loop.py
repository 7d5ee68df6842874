"""The agent loop: generate, execute what the model asked for, feed the result back,
until the model answers.

Three modes, as in ChatGLM3's demo: ``chat`` (no tools), ``tools`` (registered tools,
called by name with validated arguments) and ``code`` (Python run in a sandboxed Jupyter
kernel). Every failure on the execution side, whether an unknown tool, bad arguments,
an exception, a timeout or a crash in the kernel, goes back to the model as an
observation it can react to; the loop itself only stops at an answer or the round limit.

Results return in the model's own format, through its template: an ``observation``
turn for ChatGLM3, a ``tool`` message (``<tool_response>``) for Qwen-style templates,
``Observation:`` for ReAct. Interpreter output is wrapped as a ``result`` block, images
shown as ``[Image]``.

The loop also keeps answers grounded. A failed call or run comes back with what went
wrong and what to do (the tool's parameters; "fix the code"), and a call repeated after
failing the same way is pointed out. A final answer whose numbers appear in none of the
query's sources (the question, the code run, the results; see `grounding`) is sent back
asking the model to compute it, or to use the result it has: once, and again only after
new results.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from chatforge.agent.grounding import ungrounded_numbers
from chatforge.agent.interpreter.code_interpreter import CodeInterpreter
from chatforge.agent.interpreter.outputs import ExecutionResult, ImageOutput
from chatforge.agent.interpreter.session import InterpreterSession
from chatforge.agent.tools.definition import Tool
from chatforge.agent.tools.registry import ToolRegistry
from chatforge.agent.tools.results import ToolResult
from chatforge.chat import ChatModel
from chatforge.engines.base import GenerationStats
from chatforge.messages import INTERPRETER, Message, Role, ToolCall

log = logging.getLogger(__name__)

MODES = ("chat", "tools", "code")
CODE_TOOL_NAMES = ("python", "code_interpreter", "run_python", "execute_python")
_PYTHON_BLOCK = re.compile(r"```(?:python|py|python3)[ \t]*\n(.*?)(?:\n```|$)", re.S)

CODE_SYSTEM_PROMPT = (
    "You are a helpful assistant with a Python code interpreter (a Jupyter kernel). "
    "Never answer a question about numbers, dates, text or data from memory: write Python "
    "code that computes the answer and prints it, in one ```python block, and stop; its "
    "output comes back to you. Then answer the user in plain text with the printed values. "
    "Plots made with matplotlib are shown to the user. Files are read and written in the "
    "current working directory."
)
CODE_PRELUDE = """\
import warnings
warnings.filterwarnings("ignore", message="Glyph .* missing from font")
import numpy as np
import matplotlib.pyplot as plt
"""
"""Run once in each new kernel: small models often use ``np`` / ``plt`` without importing
them, and font warnings about missing CJK glyphs mislead them into 'fixing' working code."""

TOOLS_SYSTEM_PROMPT = (
    "You are a helpful assistant with tools. When a tool can compute or look up what the "
    "user asks, call it instead of answering from memory: do not guess calculations, "
    "conversions or the current date and time. Then answer with the values the tool returned."
)


class EventKind(StrEnum):
    TEXT = "text"  # a piece of the reply, as it streams
    TOOL_CALL = "tool_call"
    TOOL_RESULT = "tool_result"
    CODE = "code"  # code about to run
    OUTPUT = "output"  # text the code printed or returned
    IMAGE = "image"  # a PNG the code displayed
    FINAL = "final"  # the answer; the loop is over


@dataclass
class AgentEvent:
    kind: EventKind
    text: str = ""
    call: ToolCall | None = None
    result: ToolResult | None = None
    image: bytes | None = None
    execution: ExecutionResult | None = None
    message: Message | None = None


@dataclass
class AgentResult:
    answer: str
    messages: list[Message]
    events: list[AgentEvent] = field(default_factory=list)
    rounds: int = 0
    stopped_by_limit: bool = False

    @property
    def images(self) -> list[bytes]:
        return [e.image for e in self.events if e.kind is EventKind.IMAGE and e.image]


def as_registry(
    tools: Iterable[Tool | Callable[..., Any] | dict[str, Any]] | ToolRegistry | None,
) -> ToolRegistry:
    """A registry from tools, plain functions, raw JSON Schemas or a registry."""
    if isinstance(tools, ToolRegistry):
        return tools
    registry = ToolRegistry()
    for item in tools or ():
        if isinstance(item, dict):
            registry.register(Tool.from_schema(item))
        else:
            registry.register(item)
    return registry


class Agent:
    """Alternates generation and execution until the model answers.

    ``mode="tools"`` offers ``tools``; ``mode="code"`` runs ```python blocks (or the
    ChatGLM3 ``interpreter`` turn) in ``interpreter``'s session ``session_id``, created on
    demand. ``max_rounds`` bounds the generations per query. ``check_answers`` sends a
    final answer whose numbers come from nowhere back to the model once per query (see the
    module's docstring). Generation parameters (temperature, max_new_tokens, ...) pass
    through to :meth:`ChatModel.generate`.
    """

    def __init__(
        self,
        model: ChatModel,
        tools: Iterable[Tool | Callable[..., Any] | dict[str, Any]] | ToolRegistry | None = None,
        mode: str = "tools",
        *,
        system: str | None = None,
        interpreter: CodeInterpreter | None = None,
        session_id: str = "default",
        max_rounds: int = 6,
        parallel_tools: bool = True,
        check_answers: bool = True,
        **params: Any,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        if max_rounds < 1:
            raise ValueError("max_rounds must be at least 1")
        self.model = model
        self.mode = mode
        self.registry = as_registry(tools if mode != "chat" else None)
        self.max_rounds = max_rounds
        self.parallel_tools = parallel_tools
        self.check_answers = check_answers
        self.params = params
        self._own_interpreter = interpreter is None and mode == "code"
        self.interpreter = (
            interpreter if interpreter is not None else (CodeInterpreter() if mode == "code" else None)
        )
        self.session_id = session_id
        default_system = {"chat": None, "tools": TOOLS_SYSTEM_PROMPT, "code": CODE_SYSTEM_PROMPT}[mode]
        self.messages: list[Message] = []
        system = system if system is not None else default_system
        if system is not None:
            self.messages.append(Message(Role.SYSTEM, system))
        self.state = model.engine.new_state()
        self.rounds = 0
        self.stats = GenerationStats()
        """The last query's generations, summed over its rounds (tokens and seconds)."""
        self._files_changed = False
        self._prelude_kernel: int | None = None  # the kernel that has run CODE_PRELUDE
        self._sources: list[str] = []  # what this query's answer may take numbers from
        self._failed: set[str] = set()  # calls and code that failed during this query
        self._succeeded: set[str] = set()  # and those that worked
        self._executed = 0  # tool calls and code runs during this query

    # -- public -------------------------------------------------------------------
    @property
    def code_session(self) -> InterpreterSession:
        if self.interpreter is None:
            raise RuntimeError("this agent has no code interpreter (mode='code' creates one)")
        return self.interpreter.session(self.session_id)

    def upload(self, name: str, data: bytes | str) -> None:
        """Put a file in the code session's working directory; the model is told about it."""
        self.code_session.upload(name, data)
        self._files_changed = True  # the file list goes with the next user turn

    def run(self, query: str, **params: Any) -> AgentResult:
        events = list(self.stream(query, **params))
        final = events[-1]
        return AgentResult(
            answer=final.text,
            messages=list(self.messages),
            events=events,
            rounds=self.rounds,
            stopped_by_limit=final.message is None,
        )

    def stream(self, query: str | None = None, role: str = "user", **params: Any) -> Iterator[AgentEvent]:
        """Events for one query, ending with a ``FINAL`` event."""
        # Earlier turns count as sources: a follow-up may quote their results.
        self._sources = [m.content for m in self.messages if m.role is not Role.SYSTEM]
        if query is not None:
            self.messages.append(Message(Role.parse(role), self._with_files(query)))
            self._sources.append(query)
        self._failed, self._succeeded, self._executed = set(), set(), 0
        checked_at = -1  # self._executed when an answer was last sent back
        params = {**self.params, **params}
        tools = self.registry.schemas() if self.mode == "tools" and len(self.registry) else None
        self.stats = GenerationStats()
        for round_number in range(1, self.max_rounds + 1):
            self.rounds = round_number
            reply: Message | None = None
            for event in self.model.generate(self.messages, tools, state=self.state, **params):
                if event.delta:
                    yield AgentEvent(EventKind.TEXT, text=event.delta)
                if event.message is not None:
                    reply = event.message
                if event.stats is not None:
                    self._add_stats(event.stats)
            assert reply is not None
            self.messages.append(reply)
            if reply.tool_calls and self.mode != "chat":
                code_calls = [c for c in reply.tool_calls if self.mode == "code" and _is_code_call(c)]
                if code_calls:
                    yield from self._run_code(
                        str(code_calls[0].arguments.get("code", "")), call=code_calls[0]
                    )
                    continue
                yield from self._run_tools(reply.tool_calls)
                continue
            code = self._code_in(reply)
            if code is not None:
                yield from self._run_code(code)
                continue
            # An answer is sent back at most once per new result: without new evidence the
            # model's second answer stands.
            if checked_at < self._executed and round_number < self.max_rounds:
                nudge = self._check_answer(reply.content, tools is not None)
                if nudge is not None:
                    checked_at = self._executed
                    self.messages.append(Message(Role.USER, nudge))
                    continue
            yield AgentEvent(EventKind.FINAL, text=reply.content, message=reply)
            return
        note = f"(stopped after {self.max_rounds} round{'s' if self.max_rounds > 1 else ''} without a final answer)"
        yield AgentEvent(EventKind.FINAL, text=note)

    def _add_stats(self, stats: GenerationStats) -> None:
        """Sum the query's generations (all its rounds) into ``self.stats``."""
        total = self.stats
        total.prompt_tokens += stats.prompt_tokens
        total.completion_tokens += stats.completion_tokens
        total.prefill_seconds += stats.prefill_seconds
        total.decode_seconds += stats.decode_seconds

    def close(self) -> None:
        if self._own_interpreter and self.interpreter is not None:
            self.interpreter.close()

    def __enter__(self) -> Agent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- steps --------------------------------------------------------------------
    def _with_files(self, query: str) -> str:
        if not self._files_changed:
            return query
        self._files_changed = False
        return f"{query}\n\n{self.code_session.describe_files()}"

    def _code_in(self, reply: Message) -> str | None:
        if self.mode != "code":
            return None
        if reply.metadata == INTERPRETER:
            return reply.content
        match = _PYTHON_BLOCK.search(reply.content)
        return match.group(1) if match else None

    def _check_answer(self, answer: str, has_tools: bool) -> str | None:
        """A request to ground ``answer``, or None when its numbers come from the sources.

        Plain chat, and tools mode without tools, have nothing to ground answers in.
        """
        if not self.check_answers or not (self.mode == "code" or has_tools):
            return None
        missing = ungrounded_numbers(answer, self._sources)
        if not missing:
            return None
        stated = ", ".join(missing[:3])
        if self._executed == 0 and self.mode == "code":
            return (
                f"Your answer states {stated} without running any code. Do not answer from memory: "
                "write Python code that computes the answer and prints it, in one ```python block."
            )
        if self._executed == 0:
            return (
                f"Your answer states {stated} without calling any tool. If a tool can compute or "
                "look this up, call it now; otherwise give your answer again."
            )
        where = "the code printed" if self.mode == "code" else "the tools returned"
        return (
            f"Your answer states {stated}, which is not in what {where}. Answer again with the "
            f"values {where}, or, if something is still missing, "
            + ("run code that prints it." if self.mode == "code" else "call the tool that gives it.")
        )

    def _run_tools(self, calls: list[ToolCall]) -> Iterator[AgentEvent]:
        for call in calls:
            yield AgentEvent(EventKind.TOOL_CALL, call=call)
        safe = all((t := self.registry.get(c.name)) is not None and t.concurrent_safe for c in calls)
        if self.parallel_tools and safe and len(calls) > 1:
            with ThreadPoolExecutor(max_workers=min(len(calls), 8)) as pool:
                results = list(pool.map(self._invoke, calls))
        else:
            results = [self._invoke(c) for c in calls]
        for call, result in zip(calls, results, strict=True):
            yield AgentEvent(EventKind.TOOL_RESULT, text=result.content, call=call, result=result)
            self._executed += 1
            self._sources.append(call.arguments_json())
            if result.is_error:
                content = self._tool_error(call, result)
            else:
                content = result.content + self._repeat_note(f"{call.name}:{call.arguments_json()}")
                self._sources.append(result.content)
            self.messages.append(self.model.template.observation_message(content, call.name, call.id))

    def _repeat_note(self, key: str) -> str:
        """For a call or code that already worked in this query: say so, and ask for the answer."""
        if key not in self._succeeded:
            self._succeeded.add(key)
            return ""
        return "\nThis is the same as a call that already worked: answer the user now, with its result."

    def _tool_error(self, call: ToolCall, result: ToolResult) -> str:
        """The observation for a failed call: what went wrong, and what a correct call takes."""
        key = f"{call.name}:{call.arguments_json()}"
        repeated = key in self._failed
        self._failed.add(key)
        lines = [f"Error: {result.content}"]
        if repeated:
            lines.append("This call is the same as one that already failed; change it.")
        tool = self.registry.get(call.name)
        if tool is not None:
            lines.append(
                f"The call did not run, so there is no result yet. Call {call.name} again with "
                f"corrected arguments: {describe_parameters(tool.parameters)}."
            )
        return "\n".join(lines)

    def _invoke(self, call: ToolCall) -> ToolResult:
        tool = self.registry.get(call.name)
        if tool is not None and not tool.executable:
            return ToolResult(
                call.name, f"tool {call.name!r} has no implementation in this agent", is_error=True
            )
        return self.registry.invoke(call.name, call.arguments)

    def _run_code(self, code: str, call: ToolCall | None = None) -> Iterator[AgentEvent]:
        yield AgentEvent(EventKind.CODE, text=code)
        session = self.code_session
        if not session.started:
            session.start()
        if self._prelude_kernel != session.kernel_pid:  # a new or restarted kernel
            session.execute(CODE_PRELUDE)
            self._prelude_kernel = session.kernel_pid
        result = session.execute(code)
        for item in result.outputs:
            if isinstance(item, ImageOutput):
                yield AgentEvent(EventKind.IMAGE, image=item.png)
        text = result.text or "(no output)"
        yield AgentEvent(EventKind.OUTPUT, text=text, execution=result)
        self._executed += 1
        self._sources.append(code)
        content = f"```result\n{text}\n```"
        if not result.text:
            content += "\nThe code printed nothing: print the values you need."
        elif not result.ok:
            repeated = code.strip() in self._failed
            self._failed.add(code.strip())
            content += (
                "\nThis code failed the same way before: if you already have the answer, give it "
                "in plain text, without a code block; otherwise change the code."
                if repeated
                else "\nThe code failed: fix it and run it again."
            )
        else:
            content += self._repeat_note(code.strip())
            self._sources.append(text)
        self.messages.append(
            self.model.template.observation_message(
                content, call.name if call else INTERPRETER, call.id if call else None
            )
        )


def describe_parameters(schema: dict[str, Any]) -> str:
    """A tool's parameters in a line, e.g. ``expression (string, required)``; 'none' when it takes none."""
    required = set(schema.get("required", []))
    parts = []
    for name, spec in schema.get("properties", {}).items():
        kind = spec.get("type") or "/".join(
            str(option.get("type")) for option in spec.get("anyOf", []) if isinstance(option, dict)
        )
        parts.append(f"{name} ({kind or 'any'}, {'required' if name in required else 'optional'})")
    return ", ".join(parts) + ", and no other argument" if parts else "it takes no arguments"


def _is_code_call(call: ToolCall) -> bool:
    return call.name in CODE_TOOL_NAMES and isinstance(call.arguments.get("code"), str)
