"""The exceptions of the tool layer: a bad definition, bad arguments, a schema-only tool run.

Everything that goes wrong *inside* a tool call reaches the model as an error
`ToolResult` instead (see `tool_definition`); these are for the programmer.
"""

from __future__ import annotations

__all__ = ["ToolArgumentError", "ToolDefinitionError", "ToolNotExecutableError"]


class ToolDefinitionError(TypeError):
    """A function or schema cannot be turned into a tool (the message says which parameter and why)."""


class ToolArgumentError(ValueError):
    """Arguments for a tool are malformed or do not match its schema."""

    def __init__(self, tool_name: str, problems: list[str]) -> None:
        self.tool_name = tool_name
        self.problems = problems
        super().__init__(f"{tool_name}: " + "; ".join(problems))


class ToolNotExecutableError(TypeError):
    """`Tool.invoke` was called on a schema-only tool, which its caller must execute."""
