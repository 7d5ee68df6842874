"""Conversation messages: one type for every front end, with lossless conversions.

A conversation is a list of :class:`Message`. The same list can be built from, and
turned back into, the OpenAI wire format (``{"role", "content", "tool_calls", ...}``)
and the ChatGLM3 history format (``{"role", "content", "metadata", "tools"}``).
Nothing here knows about tokens or models.
"""

from __future__ import annotations

import ast
import json
import uuid
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any


class Role(StrEnum):
    SYSTEM = "system"
    USER = "user"
    ASSISTANT = "assistant"
    # ChatGLM3 calls a tool result an "observation"; OpenAI calls it "tool".
    OBSERVATION = "observation"

    @classmethod
    def parse(cls, value: str | Role) -> Role:
        if isinstance(value, Role):
            return value
        name = str(value).strip().lower()
        if name in ("tool", "function", "ipython"):
            return cls.OBSERVATION
        try:
            return cls(name)
        except ValueError:
            allowed = "system, user, assistant, observation (or tool)"
            raise MessageError(f"unknown role {value!r}; expected one of {allowed}") from None


INTERPRETER = "interpreter"
"""Metadata of an assistant message that is code for the code interpreter."""


class MessageError(ValueError):
    """A message or history entry is malformed; the text says which field."""


@dataclass
class ToolCall:
    """A call the assistant asks for: a function name and its arguments."""

    name: str
    arguments: dict[str, Any] = field(default_factory=dict)
    id: str = field(default_factory=lambda: f"call_{uuid.uuid4().hex[:24]}")

    def arguments_json(self) -> str:
        return json.dumps(self.arguments, ensure_ascii=False)

    def to_openai(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments_json()},
        }

    @classmethod
    def from_openai(cls, data: dict[str, Any], where: str = "tool_calls") -> ToolCall:
        if not isinstance(data, dict):
            raise MessageError(f"{where}: expected an object, got {type(data).__name__}")
        fn = data.get("function", data)
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise MessageError(f"{where}.function.name: a non-empty string is required")
        raw = fn.get("arguments", fn.get("parameters", {}))
        arguments = _parse_arguments(raw, f"{where}.function.arguments")
        call_id = data.get("id") or f"call_{uuid.uuid4().hex[:24]}"
        return cls(name=fn["name"], arguments=arguments, id=str(call_id))


def _parse_arguments(raw: Any, where: str) -> dict[str, Any]:
    if raw is None or raw == "":
        return {}
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as err:
            raise MessageError(f"{where}: not valid JSON ({err.msg} at position {err.pos})") from None
    if not isinstance(raw, dict):
        raise MessageError(f"{where}: expected a JSON object, got {type(raw).__name__}")
    return raw


@dataclass
class Message:
    """One turn of a conversation.

    ``metadata`` carries ChatGLM3's metadata line: ``"interpreter"`` for code the
    assistant wants run, a tool name on a tool-call turn. ``loss`` overrides whether
    a fine-tuning run trains on this message (``None``: the template's default).
    """

    role: Role
    content: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    metadata: str | None = None
    name: str | None = None
    tool_call_id: str | None = None
    tools: list[dict[str, Any]] | None = None
    loss: bool | None = None
    # The exact token ids the model generated for ``content``: rendering them back
    # unchanged lets the next turn reuse the KV cache even where re-tokenising the
    # text would give other ids. Not part of any wire format.
    token_ids: list[int] | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        self.role = Role.parse(self.role)
        if self.content is None:
            self.content = ""
        if not isinstance(self.content, str):
            raise MessageError(
                f"{self.role} message content must be a string, got {type(self.content).__name__}"
            )

    @property
    def is_tool_call(self) -> bool:
        return self.role is Role.ASSISTANT and bool(self.tool_calls)

    @property
    def is_code(self) -> bool:
        return self.role is Role.ASSISTANT and self.metadata == INTERPRETER

    def copy(self, **changes: Any) -> Message:
        return replace(self, tool_calls=list(self.tool_calls), token_ids=None, **changes)

    # -- OpenAI wire format -------------------------------------------------
    def to_openai(self) -> dict[str, Any]:
        role = "tool" if self.role is Role.OBSERVATION else self.role.value
        out: dict[str, Any] = {"role": role, "content": self.content}
        if self.tool_calls:
            out["tool_calls"] = [c.to_openai() for c in self.tool_calls]
            if not self.content:
                out["content"] = None
        if self.tool_call_id:
            out["tool_call_id"] = self.tool_call_id
        if self.name:
            out["name"] = self.name
        return out

    @classmethod
    def from_openai(cls, data: dict[str, Any], where: str = "message") -> Message:
        if not isinstance(data, dict):
            raise MessageError(f"{where}: expected an object, got {type(data).__name__}")
        if "role" not in data:
            raise MessageError(f"{where}.role: field required")
        role = Role.parse(data["role"]) if isinstance(data["role"], str) else None
        if role is None:
            raise MessageError(f"{where}.role: expected a string")
        content = _content_text(data.get("content"), f"{where}.content")
        raw_calls = data.get("tool_calls") or []
        if not isinstance(raw_calls, list):
            raise MessageError(f"{where}.tool_calls: expected a list")
        calls = [ToolCall.from_openai(c, f"{where}.tool_calls[{i}]") for i, c in enumerate(raw_calls)]
        if role is Role.ASSISTANT and data.get("function_call"):
            calls.append(ToolCall.from_openai(data["function_call"], f"{where}.function_call"))
        return cls(
            role=role,
            content=content,
            tool_calls=calls,
            tool_call_id=data.get("tool_call_id"),
            name=data.get("name"),
            metadata=data.get("metadata"),
            loss=data.get("loss"),
        )

    # -- ChatGLM3 history format -------------------------------------------
    def to_history(self) -> dict[str, Any]:
        out: dict[str, Any] = {"role": self.role.value, "content": self.content}
        if self.tools is not None:
            out["tools"] = self.tools
        if self.role is Role.ASSISTANT:
            out["metadata"] = self.metadata or ""
            if self.tool_calls:
                # ChatGLM3 keeps the tool name as metadata; the structured calls ride along
                # so that the conversion back is exact.
                out["metadata"] = self.tool_calls[0].name
                out["tool_calls"] = [c.to_openai() for c in self.tool_calls]
        if self.role is Role.OBSERVATION and self.name:
            out["name"] = self.name
        if self.tool_call_id:
            out["tool_call_id"] = self.tool_call_id
        if self.loss is not None:
            out["loss"] = self.loss
        return out

    @classmethod
    def from_history(cls, data: dict[str, Any], where: str = "history") -> Message:
        if not isinstance(data, dict):
            raise MessageError(f"{where}: expected a dict with 'role' and 'content'")
        if "role" not in data:
            raise MessageError(f"{where}.role: field required")
        role = Role.parse(data["role"])
        content = data.get("content", "")
        metadata = data.get("metadata") or None
        calls: list[ToolCall] = []
        if data.get("tool_calls"):
            calls = [
                ToolCall.from_openai(c, f"{where}.tool_calls[{i}]") for i, c in enumerate(data["tool_calls"])
            ]
        elif role is Role.ASSISTANT and isinstance(content, dict):
            # A tool call in the shape chat() returns: {"name": ..., "parameters": {...}}.
            calls = [ToolCall.from_openai(content, f"{where}.content")]
            content = ""
        elif role is Role.ASSISTANT and metadata and metadata != INTERPRETER:
            calls = [ToolCall(name=metadata.strip(), arguments=parse_tool_call_code(str(content)))]
            content = ""
        if calls:
            metadata = None
        return cls(
            role=role,
            content=_content_text(content, f"{where}.content"),
            tool_calls=calls,
            metadata=metadata,
            name=data.get("name"),
            tool_call_id=data.get("tool_call_id"),
            tools=data.get("tools"),
            loss=data.get("loss"),
        )


def _content_text(content: Any, where: str) -> str:
    """Content as text: a string, or OpenAI's list of parts (text parts are joined)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for i, part in enumerate(content):
            if isinstance(part, str):
                texts.append(part)
            elif isinstance(part, dict) and part.get("type") in ("text", "input_text"):
                text = part.get("text")
                if not isinstance(text, str):
                    raise MessageError(f"{where}[{i}].text: expected a string")
                texts.append(text)
            else:
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise MessageError(
                    f"{where}[{i}]: content part of type {kind!r} is not supported (text only)"
                )
        return "".join(texts)
    raise MessageError(f"{where}: expected a string or a list of text parts, got {type(content).__name__}")


def from_openai(messages: list[dict[str, Any]]) -> list[Message]:
    if not isinstance(messages, list):
        raise MessageError("messages: expected a list")
    return [Message.from_openai(m, f"messages[{i}]") for i, m in enumerate(messages)]


def to_openai(messages: list[Message]) -> list[dict[str, Any]]:
    return [m.to_openai() for m in messages]


def from_history(history: list[dict[str, Any]] | None) -> list[Message]:
    if history is None:
        return []
    if not isinstance(history, list):
        raise MessageError("history: expected a list of {role, content} dicts")
    return [Message.from_history(m, f"history[{i}]") for i, m in enumerate(history)]


def to_history(messages: list[Message]) -> list[dict[str, Any]]:
    return [m.to_history() for m in messages]


def tools_of(messages: list[Message]) -> list[dict[str, Any]] | None:
    """Tools declared on a system message (ChatGLM3 puts them there)."""
    for m in messages:
        if m.role is Role.SYSTEM and m.tools:
            return m.tools
    return None


def tool_name(schema: dict[str, Any]) -> str:
    """The function name in an OpenAI tool schema or a bare ChatGLM3 function dict."""
    fn = schema.get("function", schema)
    return str(fn.get("name", ""))


def normalize_tool_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """OpenAI ``{"type": "function", "function": {...}}`` shape from either common form."""
    if not isinstance(schema, dict):
        raise MessageError(f"tool schema: expected an object, got {type(schema).__name__}")
    if schema.get("type") == "function" and isinstance(schema.get("function"), dict):
        fn = schema["function"]
    else:
        fn = schema
    if not isinstance(fn.get("name"), str) or not fn["name"]:
        raise MessageError("tool schema: function.name must be a non-empty string")
    out = {"name": fn["name"], "description": fn.get("description", "")}
    params = fn.get("parameters")
    if params is None:
        params = {"type": "object", "properties": {}}
    if not isinstance(params, dict):
        raise MessageError(f"tool {fn['name']!r}: parameters must be a JSON Schema object")
    out["parameters"] = params
    return {"type": "function", "function": out}


# -- ChatGLM3's tool calls: ``tool_call(name=value, ...)`` code, parsed with ast, never run --
class ToolCallSyntaxError(ValueError):
    """Tool-call code that is not ``tool_call(name=literal, ...)``."""


def parse_tool_call_code(code: str) -> dict[str, Any]:
    """Arguments of ``tool_call(a=1, b='x')`` (optionally inside a python fence), literals only."""
    body = strip_fence(code)
    try:
        tree = ast.parse(body.strip(), mode="eval")
    except SyntaxError as err:
        raise ToolCallSyntaxError(f"tool call is not valid Python: {err.msg}") from None
    call = tree.body
    if not isinstance(call, ast.Call) or not isinstance(call.func, ast.Name) or call.func.id != "tool_call":
        raise ToolCallSyntaxError("expected a single call: tool_call(name=value, ...)")
    if call.args:
        raise ToolCallSyntaxError("tool_call takes keyword arguments only")
    out: dict[str, Any] = {}
    for kw in call.keywords:
        if kw.arg is None:
            raise ToolCallSyntaxError("tool_call does not accept **kwargs")
        try:
            out[kw.arg] = ast.literal_eval(kw.value)
        except (ValueError, SyntaxError):
            raise ToolCallSyntaxError(f"argument {kw.arg!r} is not a literal value") from None
    return out


def tool_call_code(arguments: dict[str, Any]) -> str:
    args = ", ".join(f"{k}={v!r}" for k, v in arguments.items())
    return f"```python\ntool_call({args})\n```"


def strip_fence(text: str) -> str:
    """The body of a fenced code block, or the text itself."""
    s = text.strip()
    if s.startswith("```"):
        first_newline = s.find("\n")
        s = s[first_newline + 1 :] if first_newline != -1 else ""
        if s.rstrip().endswith("```"):
            s = s.rstrip()[:-3]
    return s.strip("\n")
