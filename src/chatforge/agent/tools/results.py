"""What a tool call gives back to the model: `ToolResult`, the rendering of return values
as text (JSON for structured values) and the truncation of long text with a marker."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pydantic_core

__all__ = ["ToolResult", "render_result", "truncate_text", "truncation_marker"]


def truncation_marker(count: int, unit: str = "characters") -> str:
    """The marker that replaces cut text, e.g. ``…[truncated 1234 characters]``."""
    return f"…[truncated {count} {unit}]"


def truncate_text(text: str, limit: int) -> tuple[str, bool]:
    """Keep the first ``limit`` characters of ``text`` and mark how many were cut."""
    if len(text) <= limit:
        return text, False
    return text[:limit] + truncation_marker(len(text) - limit), True


@dataclass(frozen=True)
class ToolResult:
    """What a tool call produced, ready to be shown to the model as an observation.

    content: the result as text (JSON for structured values) or the error message.
    is_error: the call failed (bad arguments, exception, timeout, unknown tool).
    truncated: ``content`` was cut to the tool's ``max_result_chars``.
    elapsed: seconds from validation to result.
    """

    name: str
    content: str
    is_error: bool = False
    truncated: bool = False
    elapsed: float = 0.0


def render_result(value: Any) -> str:
    """Render a tool's return value for the model: strings as is, everything else as JSON if possible."""
    if isinstance(value, str):
        return value
    try:
        return json.dumps(pydantic_core.to_jsonable_python(value), ensure_ascii=False)
    except (pydantic_core.PydanticSerializationError, TypeError, ValueError):
        pass
    if isinstance(value, (dict, list, tuple, set, frozenset)):
        try:  # a container with a few odd values: keep the structure, stringify the odd ones
            return json.dumps(pydantic_core.to_jsonable_python(value, fallback=str), ensure_ascii=False)
        except Exception:  # noqa: BLE001
            pass
    try:
        return str(value)
    except Exception:  # noqa: BLE001 - a broken __str__ must not break the call
        return repr(value)
