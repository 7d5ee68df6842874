"""Tools the model can call: the public face of the tool layer, and the process-wide registry.

Import tool names from here (or from `chatforge.agent`); each job lives in its own module:

* `tool_definition`: `tool` / `Tool`, a Python function becomes a tool whose JSON Schema
  (OpenAI function shape) is derived from its signature; `Tool.from_schema` declares a
  tool by a raw JSON Schema that the caller executes; `Tool.invoke` / `Tool.ainvoke` run
  it and turn every tool-side problem into a `ToolResult` the model can read.
* `tool_schema`: signature, ``Annotated`` metadata and docstring → compact JSON Schema.
* `tool_arguments`: `Tool.validate`, arguments (a dict or the model's JSON string) checked
  *before* the call, with errors that name the tool and the field (`ToolArgumentError`).
* `tool_execution`: wall-clock timeouts for sync and async tools.
* `tool_results`: `ToolResult`, rendering of return values, truncation of long text.
* `tool_errors`: the exceptions.
* `tool_registry`: `ToolRegistry`, tools by name, their schemas for the prompt, dispatch by name.

This module owns `default_registry` and `register_tool`, which adds to it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .tool_definition import DEFAULT_MAX_RESULT_CHARS, DEFAULT_TIMEOUT, Tool, tool
from .tool_errors import ToolArgumentError, ToolDefinitionError, ToolNotExecutableError
from .tool_registry import ToolRegistry
from .tool_results import ToolResult, truncate_text, truncation_marker

__all__ = [
    "DEFAULT_MAX_RESULT_CHARS",
    "DEFAULT_TIMEOUT",
    "Tool",
    "ToolArgumentError",
    "ToolDefinitionError",
    "ToolNotExecutableError",
    "ToolRegistry",
    "ToolResult",
    "default_registry",
    "register_tool",
    "tool",
    "truncate_text",
    "truncation_marker",
]

#: A process-wide registry for scripts and notebooks (``@register_tool``). Libraries and
#: tests should build their own `ToolRegistry` instead of relying on this one.
default_registry = ToolRegistry()


def register_tool(
    fn: Callable[..., Any] | None = None, /, **options: Any
) -> Tool | Callable[[Callable[..., Any]], Tool]:
    """ChatGLM3-style ``@register_tool``: `tool` plus registration in `default_registry`."""
    return default_registry.tool(fn, **options)
