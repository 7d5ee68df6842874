"""`ToolRegistry`: tools by name, their schemas for the prompt and dispatch of the model's calls.

An unknown name is answered with an error `ToolResult` that suggests the closest name.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from chatforge.agent.tools.definition import Tool, tool
from chatforge.agent.tools.results import ToolResult

__all__ = ["ToolRegistry", "default_registry", "load_tools", "register_tool"]


class ToolRegistry:
    """Tools by name: their schemas for the prompt and dispatch of the model's calls."""

    def __init__(self, tools: Iterable[Tool | Callable[..., Any]] = ()) -> None:
        self._tools: dict[str, Tool] = {}
        for item in tools:
            self.register(item)

    def register(self, item: Tool | Callable[..., Any], *, replace: bool = False) -> Tool:
        """Add a tool (or a function, made into a tool with defaults); returns the `Tool`."""
        new = item if isinstance(item, Tool) else Tool.from_function(item)
        if new.name in self._tools and not replace:
            raise ValueError(
                f"a tool named {new.name!r} is already registered; pass replace=True to replace it"
            )
        self._tools[new.name] = new
        return new

    def tool(
        self,
        fn: Callable[..., Any] | None = None,
        /,
        **options: Any,
    ) -> Tool | Callable[[Callable[..., Any]], Tool]:
        """Decorator like `tool` that also registers the tool here (replacing one of the same name)."""

        def build(func: Callable[..., Any]) -> Tool:
            return self.register(tool(**options)(func), replace=True)

        return build(fn) if fn is not None else build

    def unregister(self, name: str) -> None:
        self._tools.pop(name, None)

    def get(self, name: str) -> Tool | None:
        return self._tools.get(name)

    def __getitem__(self, name: str) -> Tool:
        try:
            return self._tools[name]
        except KeyError:
            raise KeyError(self._unknown_message(name)) from None

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def __iter__(self) -> Iterator[Tool]:
        return iter(list(self._tools.values()))

    def __len__(self) -> int:
        return len(self._tools)

    @property
    def names(self) -> list[str]:
        return list(self._tools)

    def schemas(self) -> list[dict[str, Any]]:
        """OpenAI-shaped declarations of every tool, in registration order."""
        return [t.schema for t in self._tools.values()]

    def _unknown_message(self, name: str) -> str:
        available = ", ".join(self._tools) or "none"
        close = difflib.get_close_matches(name, list(self._tools), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        return f"unknown tool '{name}'{hint}; available: {available}"

    def invoke(self, name: str, arguments: dict[str, Any] | str | None = None) -> ToolResult:
        """Run the named tool; an unknown name gives an error `ToolResult`, not an exception."""
        found = self._tools.get(name)
        if found is None:
            return ToolResult(name, self._unknown_message(name), is_error=True)
        return found.invoke(arguments)

    async def ainvoke(self, name: str, arguments: dict[str, Any] | str | None = None) -> ToolResult:
        found = self._tools.get(name)
        if found is None:
            return ToolResult(name, self._unknown_message(name), is_error=True)
        return await found.ainvoke(arguments)

    def __repr__(self) -> str:
        return f"ToolRegistry({self.names!r})"


#: A process-wide registry for scripts and notebooks (``@register_tool``). Libraries and
#: tests should build their own `ToolRegistry` instead of relying on this one.
default_registry = ToolRegistry()


def register_tool(
    fn: Callable[..., Any] | None = None, /, **options: Any
) -> Tool | Callable[[Callable[..., Any]], Tool]:
    """ChatGLM3-style ``@register_tool``: `tool` plus registration in `default_registry`."""
    return default_registry.tool(fn, **options)


def load_tools(spec: str) -> list[Any]:
    """Tools named ``module:attr`` (``--tools``): a Tool, a function, a list of them, or a ToolRegistry."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"--tools {spec!r}: expected MODULE:ATTR, e.g. mytools:get_weather")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"--tools {spec!r}: cannot import {module_name!r} ({err})") from None
    if not hasattr(module, attr):
        raise ValueError(f"--tools {spec!r}: module {module_name!r} has no attribute {attr!r}")
    value = getattr(module, attr)
    if isinstance(value, ToolRegistry):
        return [value.get(n) for n in value.names]
    if isinstance(value, list | tuple):
        return list(value)
    if isinstance(value, Tool) or callable(value):
        return [value]
    raise ValueError(f"--tools {spec!r}: {attr} is not a tool, a function, a list or a ToolRegistry")
