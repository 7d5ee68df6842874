"""ReAct prompting for models with no tool format of their own.

The conversation is rewritten into plain chat turns and rendered with the model's
chat template: tools are described in the system message, a tool call is written as
``Action:`` / ``Action Input:`` lines after a ``Thought:``, a tool result comes back as
an ``Observation:`` turn, and the answer follows ``Final Answer:``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from chatforge.messages import Message, Role, ToolCall, tool_name
from chatforge.templates.base import Segment, StreamParser, Template

FINAL = "Final Answer:"
OBSERVATION = "Observation:"
_ACTION = re.compile(
    r"Action:\s*(?P<name>[^\n]+?)\s*\nAction Input:\s*(?P<input>.*?)(?=\n\s*Action:|\n\s*Observation:|$)",
    re.S,
)

INSTRUCTIONS = """Answer the question as well as you can. These tools are available:

{descriptions}

Work in this format:
Thought: what to do next
Action: the tool to use, one of [{names}]
Action Input: the tool's arguments as a JSON object
Observation: the tool's result (given to you; never write it yourself)
(Thought, Action, Action Input and Observation may repeat)
Thought: I know the final answer
Final Answer: the answer to the question"""


class ReActTemplate(Template):
    name = "react"

    def __init__(self, inner: Template) -> None:
        super().__init__(inner.tokenizer)
        self.inner = inner

    @property
    def stop_strings(self) -> list[str]:
        return [*self.inner.stop_strings, OBSERVATION]

    def segments(
        self, messages: Sequence[Message], tools: list[dict[str, Any]] | None, add_generation_prompt: bool
    ) -> list[Segment]:
        plain, origin = self._rewrite(list(messages), tools)
        segs = self.inner.segments(plain, None, add_generation_prompt)
        for s in segs:
            if s.message is not None:
                s.message = origin[s.message]
        return segs

    def _rewrite(
        self, messages: list[Message], tools: list[dict[str, Any]] | None
    ) -> tuple[list[Message], list[int | None]]:
        out: list[Message] = []
        origin: list[int | None] = []
        if tools:
            system = messages[0].content if messages and messages[0].role is Role.SYSTEM else ""
            text = INSTRUCTIONS.format(
                descriptions=_describe(tools), names=", ".join(tool_name(t) for t in tools)
            )
            out.append(Message(Role.SYSTEM, f"{system}\n\n{text}" if system else text))
            origin.append(0 if system else None)
        for i, m in enumerate(messages):
            if m.role is Role.SYSTEM and tools:
                continue
            if m.role is Role.OBSERVATION:
                out.append(Message(Role.USER, f"{OBSERVATION} {m.content}", loss=m.loss))
            elif m.role is Role.ASSISTANT and m.tool_calls:
                thought = m.content.strip() or "I should use a tool."
                steps = [thought if thought.startswith("Thought:") else f"Thought: {thought}"]
                steps += [f"Action: {c.name}\nAction Input: {c.arguments_json()}" for c in m.tool_calls]
                out.append(Message(Role.ASSISTANT, "\n".join(steps), loss=m.loss))
            elif m.role is Role.ASSISTANT and tools and FINAL not in m.content:
                out.append(
                    Message(
                        Role.ASSISTANT, f"Thought: I know the final answer.\n{FINAL} {m.content}", loss=m.loss
                    )
                )
            else:
                out.append(m.copy())
            origin.append(i)
        return out, origin

    def parse(self, text: str, tools: list[dict[str, Any]] | None = None) -> Message:
        if FINAL in text:
            return Message(Role.ASSISTANT, text.split(FINAL, 1)[1].strip())
        calls = []
        for match in _ACTION.finditer(text):
            raw = match.group("input").strip()
            try:
                args = json.loads(raw) if raw else {}
            except json.JSONDecodeError:
                args = {"input": raw}
            if not isinstance(args, dict):
                args = {"input": args}
            calls.append(ToolCall(name=match.group("name").strip(), arguments=args))
        if calls:
            thought = text[: text.find("Action:")].strip()
            thought = thought[len("Thought:") :].strip() if thought.startswith("Thought:") else thought
            return Message(Role.ASSISTANT, thought, tool_calls=calls)
        return Message(Role.ASSISTANT, text.strip())

    def stream_parser(self, tools: list[dict[str, Any]] | None = None) -> StreamParser:
        return _FinalAnswerStreamParser(self, tools)


class _FinalAnswerStreamParser(StreamParser):
    """Shows only the final answer of a ReAct reply (all of it when no tools were offered)."""

    def __init__(self, template: ReActTemplate, tools: list[dict[str, Any]] | None) -> None:
        super().__init__()
        self.template = template
        self.tools = tools

    def visible(self, text: str, final: bool) -> str:
        if not self.tools:
            return text.lstrip()
        if FINAL in text:
            return text.split(FINAL, 1)[1].lstrip()
        return ""

    def parse_final(self, text: str) -> Message:
        return self.template.parse(text, self.tools)


def _describe(tools: list[dict[str, Any]]) -> str:
    lines = []
    for t in tools:
        fn = t.get("function", t)
        params = json.dumps(fn.get("parameters", {}), ensure_ascii=False)
        lines.append(f"{fn['name']}: {fn.get('description', '').strip()} Parameters: {params}")
    return "\n".join(lines)
