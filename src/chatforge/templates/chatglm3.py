"""The native ChatGLM3 format.

A prompt starts with ``[gMASK]sop``; each message is a role token (``<|system|>``,
``<|user|>``, ``<|assistant|>``, ``<|observation|>``), a metadata line and the content,
with nothing between turns. Tools are listed as JSON in the system message. A tool
call is an assistant turn whose metadata is the tool name and whose content is a python
block ``tool_call(arg=value, ...)``; code for the interpreter has metadata
``interpreter``. A reply ends at ``<|user|>``, ``<|observation|>`` or the end token.

Tool-call code is read with :mod:`ast` and literal values only: it is never evaluated.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

from chatforge.messages import (
    INTERPRETER,
    Message,
    Role,
    ToolCall,
    ToolCallSyntaxError,
    parse_tool_call_code,
    strip_fence,
    tool_call_code,
    tools_of,
)
from chatforge.templates.base import Segment, StreamParser, Template, TemplateError
from chatforge.tokenizer import Tokenizer

log = logging.getLogger(__name__)

ROLE_TOKENS = {
    Role.SYSTEM: "<|system|>",
    Role.USER: "<|user|>",
    Role.ASSISTANT: "<|assistant|>",
    Role.OBSERVATION: "<|observation|>",
}
PREFIX = "[gMASK]sop"
REQUIRED_TOKENS = ("[gMASK]", "sop", *ROLE_TOKENS.values())


class ChatGLM3Template(Template):
    name = "chatglm3"

    def __init__(self, tokenizer: Tokenizer) -> None:
        super().__init__(tokenizer)
        vocab = tokenizer.get_vocab()
        missing = [t for t in REQUIRED_TOKENS if t not in vocab]
        if missing:
            raise TemplateError(
                f"the ChatGLM3 template needs the special tokens {', '.join(missing)} in the tokenizer"
            )

    @property
    def stop_strings(self) -> list[str]:
        stops = [ROLE_TOKENS[Role.USER], ROLE_TOKENS[Role.OBSERVATION]]
        if self.tokenizer.eos_token:
            stops.append(self.tokenizer.eos_token)
        return stops

    def segments(
        self, messages: Sequence[Message], tools: list[dict[str, Any]] | None, add_generation_prompt: bool
    ) -> list[Segment]:
        segs = [Segment(PREFIX)]
        tools = tools or tools_of(list(messages))
        has_system = bool(messages) and messages[0].role is Role.SYSTEM
        if tools and not has_system:
            segs += self._system(None, tools)
        previous_assistant: int | None = None
        for i, m in enumerate(messages):
            if m.role is Role.SYSTEM:
                segs += self._system(i, tools, m.content)
                continue
            for j, (metadata, content) in enumerate(_turns(m)):
                role = ROLE_TOKENS[m.role]
                # The token that starts a turn is what ends the assistant's turn before it.
                if j > 0:
                    segs.append(Segment(role, message=i, output=True))
                else:
                    ends = previous_assistant is not None
                    segs.append(Segment(role, message=previous_assistant if ends else None, output=ends))
                segs.append(Segment(f"{metadata}\n", message=i, output=True))
                segs.append(
                    Segment(content, message=i, output=True, literal=not metadata or metadata == INTERPRETER)
                )
            previous_assistant = i if m.role is Role.ASSISTANT else None
        if add_generation_prompt:
            segs.append(Segment(ROLE_TOKENS[Role.ASSISTANT], message=previous_assistant, output=True))
        elif previous_assistant is not None and self.tokenizer.eos_token:
            segs.append(Segment(self.tokenizer.eos_token, message=previous_assistant, output=True))
        return segs

    def _system(
        self, index: int | None, tools: list[dict[str, Any]] | None, content: str = ""
    ) -> list[Segment]:
        text = content
        if tools:
            functions = [t.get("function", t) for t in tools]
            text = (content + "\n" if content else "") + json.dumps(functions, indent=4, ensure_ascii=False)
        return [
            Segment(ROLE_TOKENS[Role.SYSTEM]),
            Segment("\n", message=index),
            Segment(text, message=index, literal=True),
        ]

    def encode(self, text: str, literal: bool = False) -> list[int]:
        if text in ROLE_TOKENS.values() or text == self.tokenizer.eos_token:
            return [self.tokenizer.convert_tokens_to_ids(text)]
        if text == PREFIX:
            return [
                self.tokenizer.convert_tokens_to_ids("[gMASK]"),
                self.tokenizer.convert_tokens_to_ids("sop"),
            ]
        return super().encode(text, literal)

    def parse(self, text: str, tools: list[dict[str, Any]] | None = None) -> Message:
        calls: list[ToolCall] = []
        code: str | None = None
        plain: list[str] = []
        for part in text.split(ROLE_TOKENS[Role.ASSISTANT]):
            metadata, _, content = part.partition("\n") if "\n" in part else ("", "", part)
            metadata = metadata.strip()
            if not metadata:
                plain.append(content.strip())
            elif metadata == INTERPRETER:
                code = strip_fence(content)
            else:
                try:
                    calls.append(ToolCall(name=metadata, arguments=parse_tool_call_code(content)))
                except ToolCallSyntaxError as err:
                    log.warning("reply looked like a call to %r but could not be read: %s", metadata, err)
                    plain.append(part.strip())
        if code is not None and not calls:
            return Message(Role.ASSISTANT, code, metadata=INTERPRETER)
        return Message(Role.ASSISTANT, "\n".join(p for p in plain if p), tool_calls=calls)

    def stream_parser(self, tools: list[dict[str, Any]] | None = None) -> StreamParser:
        return _MetadataStreamParser(self, tools)


class _MetadataStreamParser(StreamParser):
    """Shows a reply only once its metadata line says it is plain text."""

    def __init__(self, template: ChatGLM3Template, tools: list[dict[str, Any]] | None) -> None:
        super().__init__()
        self.template = template
        self.tools = tools

    def visible(self, text: str, final: bool) -> str:
        metadata, newline, content = text.partition("\n")
        if not newline or metadata.strip():
            return ""
        marker = ROLE_TOKENS[Role.ASSISTANT]
        cut = content.find(marker)
        return (content if cut == -1 else content[:cut]).lstrip()

    def parse_final(self, text: str) -> Message:
        return self.template.parse(text, self.tools)


def _turns(m: Message) -> list[tuple[str, str]]:
    """(metadata, content) of each turn a message renders as; several tool calls, several turns."""
    if m.role is Role.ASSISTANT and m.tool_calls:
        turns = [(c.name, tool_call_code(c.arguments)) for c in m.tool_calls]
        if m.content:
            turns.insert(0, ("", m.content))
        return turns
    if m.role is Role.ASSISTANT and m.metadata == INTERPRETER:
        return [(INTERPRETER, f"```python\n{strip_fence(m.content)}\n```")]
    return [("", m.content)]
