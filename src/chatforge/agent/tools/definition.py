"""`Tool` and the `tool` decorator: a Python function (or a raw JSON Schema) becomes a tool
the model can call, with its OpenAI-shaped declaration and model-facing `invoke` / `ainvoke`.

Parameters are described either the ChatGLM3 way, ``Annotated[str, "The name of the city",
True]`` (type, description, required), or with plain type hints plus a Google-style
docstring ``Args:`` section (see `tool_schema`); arguments are checked by `tool_arguments`
and run under the tool's timeout by `tool_execution`. `invoke` turns every tool-side
problem (bad arguments, exceptions, timeouts, unserialisable or huge results) into a
`ToolResult` the model can read, instead of an exception.
"""

from __future__ import annotations

import functools
import inspect
import logging
import re
import time
from collections.abc import Callable
from typing import Any, overload

from chatforge.agent.tools.arguments import JsonSchemaArguments, PydanticArguments, parse_arguments
from chatforge.agent.tools.errors import ToolArgumentError, ToolDefinitionError, ToolNotExecutableError
from chatforge.agent.tools.execution import (
    ToolTimeout,
    await_with_timeout,
    run_coroutine_in_thread,
    run_in_daemon_thread,
    run_sync_in_thread,
)
from chatforge.agent.tools.results import ToolResult, render_result, truncate_text
from chatforge.agent.tools.schema import parse_docstring

__all__ = ["DEFAULT_MAX_RESULT_CHARS", "DEFAULT_TIMEOUT", "Tool", "tool"]

# The logger keeps the name it had before `tools` was split, so logging configuration still applies.
logger = logging.getLogger("chatforge.agent.tools")

DEFAULT_TIMEOUT = 30.0
DEFAULT_MAX_RESULT_CHARS = 8000
_TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class Tool:
    """A callable the model can use, with its JSON Schema and safe execution.

    Build one with `tool` (from a function) or `Tool.from_schema` (caller-executed).
    Calling the tool object calls the function unchanged; `invoke` / `ainvoke` are the
    model-facing entry points that validate, time out and never raise for tool errors.
    """

    def __init__(
        self,
        name: str,
        description: str,
        parameters: dict[str, Any],
        fn: Callable[..., Any] | None = None,
        *,
        timeout: float | None = DEFAULT_TIMEOUT,
        concurrent_safe: bool = True,
        max_result_chars: int = DEFAULT_MAX_RESULT_CHARS,
        _arguments: PydanticArguments | JsonSchemaArguments | None = None,
    ) -> None:
        if not _TOOL_NAME.match(name):
            raise ToolDefinitionError(
                f"tool name {name!r} is invalid: use 1-64 letters, digits, '_' or '-' (what model APIs accept)"
            )
        if timeout is not None and timeout <= 0:
            raise ToolDefinitionError(
                f"tool {name!r}: timeout must be positive seconds or None, got {timeout}"
            )
        if max_result_chars <= 0:
            raise ToolDefinitionError(
                f"tool {name!r}: max_result_chars must be positive, got {max_result_chars}"
            )
        if fn is not None:
            # First, so that the function's attributes cannot shadow the tool's own.
            functools.update_wrapper(self, fn)  # type: ignore[arg-type]
        self.name = name
        self.description = description
        self.fn = fn
        self.timeout = timeout
        self.concurrent_safe = concurrent_safe
        self.max_result_chars = max_result_chars
        self._arguments = _arguments or JsonSchemaArguments(name, parameters)
        self.parameters = parameters

    # -- construction

    @classmethod
    def from_function(
        cls,
        fn: Callable[..., Any],
        *,
        name: str | None = None,
        description: str | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
        concurrent_safe: bool = True,
        max_result_chars: int = DEFAULT_MAX_RESULT_CHARS,
    ) -> Tool:
        """A tool from a function; see `tool` for how parameters are described."""
        if isinstance(fn, Tool):
            fn = fn.fn  # type: ignore[assignment]
        if not callable(fn):
            raise ToolDefinitionError(f"@tool needs a function, got {fn!r}")
        tool_name = name or getattr(fn, "__name__", "")
        doc = parse_docstring(inspect.getdoc(fn))
        arguments = PydanticArguments(tool_name, fn, doc.params)
        return cls(
            tool_name,
            description if description is not None else doc.summary,
            arguments.schema,
            fn,
            timeout=timeout,
            concurrent_safe=concurrent_safe,
            max_result_chars=max_result_chars,
            _arguments=arguments,
        )

    @classmethod
    def from_schema(
        cls,
        schema: dict[str, Any],
        fn: Callable[..., Any] | None = None,
        *,
        timeout: float | None = DEFAULT_TIMEOUT,
        concurrent_safe: bool = True,
        max_result_chars: int = DEFAULT_MAX_RESULT_CHARS,
    ) -> Tool:
        """A tool declared by a JSON Schema in OpenAI function format.

        Accepts ``{"type": "function", "function": {...}}`` or the inner
        ``{"name", "description", "parameters"}``. Without ``fn`` the tool is
        schema-only (``executable`` is False): its arguments can be validated, and the
        caller runs it. With ``fn``, validated arguments are passed as keywords.
        """
        if not isinstance(schema, dict):
            raise ToolDefinitionError(f"a tool schema must be a dict, got {type(schema).__name__}")
        function = schema.get("function", schema) if schema.get("type") == "function" else schema
        if not isinstance(function, dict) or not function.get("name"):
            raise ToolDefinitionError(
                "a tool schema needs a 'name', as in {'type': 'function', 'function': {'name': ..., 'parameters': {...}}}"
            )
        parameters = function.get("parameters") or {"type": "object", "properties": {}}
        if parameters.get("type", "object") != "object":
            raise ToolDefinitionError(
                f"tool {function['name']!r}: 'parameters' must be a JSON Schema of type 'object'"
            )
        return cls(
            function["name"],
            function.get("description", ""),
            parameters,
            fn,
            timeout=timeout,
            concurrent_safe=concurrent_safe,
            max_result_chars=max_result_chars,
        )

    # -- description

    @property
    def executable(self) -> bool:
        """False for schema-only tools that the caller executes."""
        return self.fn is not None

    @property
    def is_async(self) -> bool:
        return self.fn is not None and inspect.iscoroutinefunction(self.fn)

    @property
    def function_schema(self) -> dict[str, Any]:
        """``{"name", "description", "parameters"}``: the inner part of `schema` (ChatGLM3's tool list format)."""
        return {"name": self.name, "description": self.description, "parameters": self.parameters}

    @property
    def schema(self) -> dict[str, Any]:
        """The OpenAI tool declaration: ``{"type": "function", "function": {...}}``."""
        return {"type": "function", "function": self.function_schema}

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.fn is None:
            raise ToolNotExecutableError(
                f"tool {self.name!r} is declared by a schema only; its caller executes it"
            )
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        kind = "" if self.executable else ", schema-only"
        return f"Tool({self.name!r}{kind})"

    # -- validation

    def validate(self, arguments: dict[str, Any] | str | None) -> dict[str, Any]:
        """Parse and check arguments; return keyword arguments for the function.

        ``arguments`` may be a dict or the JSON text a model produced (``""`` / ``None``
        mean no arguments). Raises `ToolArgumentError` naming the tool and field.
        """
        return self._arguments.validate(self.name, parse_arguments(self.name, arguments, self.parameters))

    # -- execution

    def invoke(self, arguments: dict[str, Any] | str | None = None) -> ToolResult:
        """Validate and run the tool; every tool-side failure comes back as an error `ToolResult`."""
        started, kwargs = self._start(arguments)
        if isinstance(kwargs, ToolResult):
            return kwargs
        try:
            if self.is_async:
                value = run_coroutine_in_thread(
                    functools.partial(self.fn, **kwargs),  # type: ignore[arg-type]
                    self.timeout,
                    f"tool-{self.name}",
                )
            elif self.timeout is None:
                value = self.fn(**kwargs)  # type: ignore[misc]
            else:
                value = run_in_daemon_thread(
                    functools.partial(self.fn, **kwargs),  # type: ignore[arg-type]
                    self.timeout,
                    f"tool-{self.name}",
                )
        except ToolTimeout:
            return self._timed_out(started)
        except (Exception, SystemExit) as exc:
            return self._exception(exc, started)
        return self._success(value, started)

    async def ainvoke(self, arguments: dict[str, Any] | str | None = None) -> ToolResult:
        """`invoke` for async callers: async tools are awaited, sync ones run in a daemon thread."""
        started, kwargs = self._start(arguments)
        if isinstance(kwargs, ToolResult):
            return kwargs
        try:
            if self.is_async:
                value = await await_with_timeout(self.fn(**kwargs), self.timeout)  # type: ignore[misc]
            else:
                value = await await_with_timeout(
                    run_sync_in_thread(functools.partial(self.fn, **kwargs), f"tool-{self.name}"),  # type: ignore[arg-type]
                    self.timeout,
                )
        except ToolTimeout:
            return self._timed_out(started)
        except (Exception, SystemExit) as exc:
            return self._exception(exc, started)
        return self._success(value, started)

    def _start(self, arguments: dict[str, Any] | str | None) -> tuple[float, dict[str, Any] | ToolResult]:
        """The start time, and the validated keyword arguments or the error result for bad ones."""
        self._require_executable()
        started = time.perf_counter()
        try:
            return started, self.validate(arguments)
        except ToolArgumentError as exc:
            return started, self._error(str(exc), started)

    def _require_executable(self) -> None:
        if self.fn is None:
            raise ToolNotExecutableError(
                f"tool {self.name!r} is declared by a schema only (Tool.from_schema without fn); "
                "the caller must execute it, or pass fn= to make it executable"
            )

    def _success(self, value: Any, started: float) -> ToolResult:
        content, truncated = truncate_text(render_result(value), self.max_result_chars)
        return ToolResult(
            self.name, content, is_error=False, truncated=truncated, elapsed=time.perf_counter() - started
        )

    def _timed_out(self, started: float) -> ToolResult:
        return self._error(f"{self.name}: timed out after {self.timeout:g} s", started)

    def _exception(self, exc: BaseException, started: float) -> ToolResult:
        logger.warning("tool %r raised %s", self.name, type(exc).__name__, exc_info=exc)
        message = str(exc)
        text = (
            f"{self.name}: {type(exc).__name__}: {message}"
            if message
            else f"{self.name}: {type(exc).__name__}"
        )
        return self._error(text, started)

    def _error(self, message: str, started: float) -> ToolResult:
        content, truncated = truncate_text(message, self.max_result_chars)
        return ToolResult(
            self.name, content, is_error=True, truncated=truncated, elapsed=time.perf_counter() - started
        )


@overload
def tool(fn: Callable[..., Any], /) -> Tool: ...


@overload
def tool(
    *,
    name: str | None = None,
    description: str | None = None,
    timeout: float | None = DEFAULT_TIMEOUT,
    concurrent_safe: bool = True,
    max_result_chars: int = DEFAULT_MAX_RESULT_CHARS,
) -> Callable[[Callable[..., Any]], Tool]: ...


def tool(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    timeout: float | None = DEFAULT_TIMEOUT,
    concurrent_safe: bool = True,
    max_result_chars: int = DEFAULT_MAX_RESULT_CHARS,
) -> Tool | Callable[[Callable[..., Any]], Tool]:
    """Turn a function into a `Tool` (bare ``@tool`` or ``@tool(name=..., timeout=...)``).

    Name: the function's name unless given. Description: the docstring's summary unless
    given. Parameters, either form:

    * ChatGLM3: ``city: Annotated[str, "The name of the city", True]`` (type, description, required);
    * plain: ``city: str`` / ``days: int = 3`` with descriptions from the docstring's ``Args:`` section.

    ``timeout`` (seconds, None for no limit) bounds `Tool.invoke`; ``concurrent_safe``
    tells the agent loop whether calls may run in parallel; ``max_result_chars`` caps the
    result text. The function is not registered anywhere: add it to a `ToolRegistry`
    (or use `register_tool` for the default registry).
    """

    def build(func: Callable[..., Any]) -> Tool:
        return Tool.from_function(
            func,
            name=name,
            description=description,
            timeout=timeout,
            concurrent_safe=concurrent_safe,
            max_result_chars=max_result_chars,
        )

    return build(fn) if fn is not None else build
