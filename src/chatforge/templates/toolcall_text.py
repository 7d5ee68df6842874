"""Finding JSON tool calls in generated text.

Models with a Hugging Face chat template write ``<tool_call>{"name": ..., "arguments":
...}</tool_call>``; small models often write the same object in a fenced ```json block
or as a bare JSON object instead. This module finds all of them, and tells a streaming
parser how much of the text is safe to show.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from chatforge.messages import ToolCall, tool_name

TAG_OPEN = "<tool_call>"
TAG_CLOSE = "</tool_call>"
FENCE = "```"
_FENCE_BLOCK = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[ \t]*\n(.*?)(?:\n[ \t]*```|$)", re.S)


@dataclass
class Found:
    start: int
    end: int
    calls: list[ToolCall]


def call_from_json(text: str, tool_names: set[str] | None) -> list[ToolCall] | None:
    """Tool calls in a JSON text (an object or a list of objects), else None.

    ``tool_names`` restricts names to the tools offered (used for the lenient forms, where
    a JSON block could just as well be an answer).
    """
    try:
        data = json.loads(text.strip())
    except (json.JSONDecodeError, ValueError):
        return None
    items = data if isinstance(data, list) else [data]
    calls = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            return None
        args: Any = item.get("arguments", item.get("parameters", {}))
        if isinstance(args, str):
            try:
                args = json.loads(args)
            except json.JSONDecodeError:
                return None
        if not isinstance(args, dict):
            return None
        if tool_names is not None and item["name"] not in tool_names:
            return None
        calls.append(ToolCall(name=item["name"], arguments=args))
    return calls or None


def find_calls(text: str, tools: list[dict[str, Any]] | None) -> list[Found]:
    """Every tool call in ``text``: tagged blocks always, fenced or bare JSON when tools were offered."""
    found: list[Found] = []
    pos = 0
    while (start := text.find(TAG_OPEN, pos)) != -1:
        close = text.find(TAG_CLOSE, start)
        end = len(text) if close == -1 else close + len(TAG_CLOSE)
        body = text[start + len(TAG_OPEN) : close if close != -1 else len(text)]
        calls = call_from_json(body, None)
        if calls:
            found.append(Found(start, end, calls))
        pos = end
    if found or not tools:
        return found
    names = {tool_name(t) for t in tools}
    for match in _FENCE_BLOCK.finditer(text):
        if match.group(1).lower() not in ("", "json", "tool_call", "tool", "function"):
            continue
        calls = call_from_json(match.group(2), names)
        if calls:
            found.append(Found(match.start(), match.end(), calls))
    if not found:
        stripped = text.strip()
        if stripped.startswith("{") or stripped.startswith("["):
            calls = call_from_json(stripped, names)
            if calls:
                found.append(Found(0, len(text), calls))
    return found


def split_calls(text: str, tools: list[dict[str, Any]] | None) -> tuple[str, list[ToolCall]]:
    """The text with tool-call blocks removed, and the calls."""
    found = find_calls(text, tools)
    content, calls, pos = [], [], 0
    for f in found:
        content.append(text[pos : f.start])
        calls.extend(f.calls)
        pos = f.end
    content.append(text[pos:])
    return "".join(content).strip(), calls


def safe_prefix_length(text: str, tools: list[dict[str, Any]] | None, final: bool) -> int:
    """How much of a streaming reply can be shown without leaking tool-call markup.

    Text is held back from the first place a tool call could begin: a ``<tool_call>``
    tag (or a partial one at the end), and, when tools were offered, a code fence or a
    reply that starts with ``{``. A fenced block that closes and is not a tool call is
    released.
    """
    if final:
        return len(text)
    limit = len(text)
    tag = text.find(TAG_OPEN)
    if tag != -1:
        limit = tag
    else:
        limit = min(limit, _partial_suffix_start(text, TAG_OPEN))
    if not tools:
        return limit
    if text.lstrip().startswith(("{", "[")):
        return 0
    pos = 0
    while (start := text.find(FENCE, pos)) != -1 and start < limit:
        match = _FENCE_BLOCK.match(text, start)
        closed = match is not None and match.group(0).rstrip().endswith(FENCE) and match.end() > start + 3
        if not closed:
            return start
        names = {tool_name(t) for t in tools}
        if call_from_json(match.group(2), names):
            return start
        pos = match.end()
    return min(limit, _partial_suffix_start(text, FENCE))


def _partial_suffix_start(text: str, marker: str) -> int:
    """Index where a partial ``marker`` starts at the end of ``text``, else ``len(text)``."""
    for k in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:k]):
            return len(text) - k
    return len(text)
