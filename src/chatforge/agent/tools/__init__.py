"""Tools the model can call. Public names are re-exported here; each job lives in its own module:

* `definition`: `tool` / `Tool`, a Python function becomes a tool whose JSON Schema
  (OpenAI function shape) is derived from its signature; `Tool.from_schema` declares a
  tool by a raw JSON Schema that the caller executes; `Tool.invoke` / `Tool.ainvoke` run
  it and turn every tool-side problem into a `ToolResult` the model can read.
* `schema`: signature, ``Annotated`` metadata and docstring → compact JSON Schema.
* `arguments`: `Tool.validate`, arguments (a dict or the model's JSON string) checked
  *before* the call, with errors that name the tool and the field (`ToolArgumentError`).
* `execution`: wall-clock timeouts for sync and async tools.
* `results`: `ToolResult`, rendering of return values, truncation of long text.
* `errors`: the exceptions.
* `registry`: `ToolRegistry`, tools by name, their schemas for the prompt, dispatch by
  name; the process-wide `default_registry` with `register_tool`; `load_tools` for
  ``--tools MODULE:ATTR``.
* `builtin`: the built-in tools (time, arithmetic, unit conversion).
"""

from chatforge.agent.tools.builtin import builtin_tools
from chatforge.agent.tools.definition import DEFAULT_MAX_RESULT_CHARS, DEFAULT_TIMEOUT, Tool, tool
from chatforge.agent.tools.errors import ToolArgumentError, ToolDefinitionError, ToolNotExecutableError
from chatforge.agent.tools.registry import ToolRegistry, default_registry, load_tools, register_tool
from chatforge.agent.tools.results import ToolResult, truncate_text, truncation_marker

__all__ = [
    "DEFAULT_MAX_RESULT_CHARS",
    "DEFAULT_TIMEOUT",
    "Tool",
    "ToolArgumentError",
    "ToolDefinitionError",
    "ToolNotExecutableError",
    "ToolRegistry",
    "ToolResult",
    "builtin_tools",
    "default_registry",
    "load_tools",
    "register_tool",
    "tool",
    "truncate_text",
    "truncation_marker",
]
