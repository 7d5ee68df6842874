"""Tools the model can call: declaration, JSON Schema, argument validation and safe execution.

This module owns:

* `tool` / `Tool`: a Python function becomes a tool whose JSON Schema (OpenAI function
  shape) is derived from its signature. Parameters are described either the ChatGLM3 way,
  ``Annotated[str, "The name of the city", True]`` (type, description, required), or
  with plain type hints plus a Google-style docstring ``Args:`` section.
* `Tool.from_schema`: a tool declared by a raw JSON Schema that the caller executes.
* `Tool.validate`: arguments (a dict or the model's JSON string) checked *before* the
  call, with errors that name the tool and the field (`ToolArgumentError`).
* `Tool.invoke` / `Tool.ainvoke`: run the tool under a wall-clock timeout and turn every
  tool-side problem (bad arguments, exceptions, timeouts, unserialisable or huge results)
  into a `ToolResult` the model can read, instead of an exception.
* `ToolRegistry`: tools by name, their schemas for the prompt, dispatch by name.

Nothing here evaluates model output as code: arguments are parsed with `json` and
validated with pydantic / jsonschema.
"""

from __future__ import annotations

import asyncio
import contextvars
import difflib
import functools
import inspect
import json
import logging
import re
import threading
import time
import types
import typing
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Annotated, Any, Union, get_args, get_origin, overload

import jsonschema
import pydantic
import pydantic_core

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

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 30.0
DEFAULT_MAX_RESULT_CHARS = 8000
_TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_DOCSTRING_SECTION = re.compile(
    r"^(Args|Arguments|Parameters|Keyword Args|Keyword Arguments|Returns|Return|Yields|Raises|"
    r"Examples?|Notes?|Warnings?|See Also|Attributes|Todo|References)\s*:\s*$"
)
_ARG_SECTIONS = {"Args", "Arguments", "Parameters", "Keyword Args", "Keyword Arguments"}
_DOC_ARG_LINE = re.compile(r"^(\*{0,2}[A-Za-z_][A-Za-z0-9_]*)\s*(?:\(([^)]*)\))?\s*:\s*(.*)$")


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


# ----------------------------------------------------------------------------- docstrings


@dataclass(frozen=True)
class _Docstring:
    summary: str
    params: dict[str, str]


def _parse_docstring(doc: str | None) -> _Docstring:
    """Summary (everything before the first section) and ``Args:`` descriptions of a Google-style docstring."""
    if not doc:
        return _Docstring("", {})
    lines = inspect.cleandoc(doc).splitlines()
    summary_lines: list[str] = []
    params: dict[str, str] = {}
    section: str | None = None
    current: str | None = None
    arg_indent: int | None = None
    for line in lines:
        stripped = line.strip()
        header = _DOCSTRING_SECTION.match(stripped)
        if header and (len(line) - len(line.lstrip())) == 0:
            section, current, arg_indent = header.group(1), None, None
            continue
        if section is None:
            summary_lines.append(stripped)
            continue
        if section not in _ARG_SECTIONS or not stripped:
            continue
        indent = len(line) - len(line.lstrip())
        match = _DOC_ARG_LINE.match(stripped)
        if match and (arg_indent is None or indent <= arg_indent):
            arg_indent = indent
            current = match.group(1).lstrip("*")
            params[current] = match.group(3).strip()
        elif current is not None:
            params[current] = f"{params[current]} {stripped}".strip()
    # Keep paragraph breaks, collapse line wrapping inside paragraphs.
    paragraphs = "\n".join(summary_lines).strip().split("\n\n")
    summary = "\n\n".join(" ".join(p.split()) for p in paragraphs if p.strip())
    return _Docstring(summary, params)


# ----------------------------------------------------------------------------- schema cleaning


def _clean_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """Make pydantic's JSON Schema compact for a prompt.

    Inlines non-recursive ``$defs``, drops ``title`` noise, writes ``X | None`` as
    ``{"type": [X, "null"]}`` and removes ``additionalProperties: true``.
    """
    defs: dict[str, Any] = schema.pop("$defs", {})
    recursive = {name for name in defs if _refers_to(defs[name], name, defs, set())}

    def walk(node: Any, in_properties: bool = False) -> Any:
        if isinstance(node, list):
            return [walk(item) for item in node]
        if not isinstance(node, dict):
            return node
        if in_properties:  # keys are property names, not schema keywords
            return {key: walk(value) for key, value in node.items()}
        node = dict(node)
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            name = ref.split("/")[-1]
            if name not in recursive and name in defs:
                node.pop("$ref")
                node = {**walk(defs[name]), **{k: walk(v) for k, v in node.items()}}
        if "allOf" in node and len(node["allOf"]) == 1:
            inner = walk(node.pop("allOf")[0])
            node = {**inner, **node}
        out: dict[str, Any] = {}
        for key, value in node.items():
            if key == "title" and isinstance(value, str):
                continue
            if key == "additionalProperties" and value is True:
                continue
            if key in ("properties", "$defs"):
                out[key] = walk(value, in_properties=True)
            elif key in _VALUE_KEYWORDS:  # data, not schema: leave untouched
                out[key] = value
            else:
                out[key] = walk(value)
        return _simplify_nullable(out)

    cleaned = walk(schema)
    kept_defs = {name: walk(defs[name]) for name in sorted(recursive)}
    if kept_defs:
        cleaned["$defs"] = kept_defs
    return cleaned


_VALUE_KEYWORDS = frozenset({"default", "enum", "const", "examples", "example"})


def _refers_to(node: Any, target: str, defs: dict[str, Any], seen: set[str]) -> bool:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            name = ref.split("/")[-1]
            if name == target:
                return True
            if name not in seen and name in defs:
                seen.add(name)
                if _refers_to(defs[name], target, defs, seen):
                    return True
        return any(_refers_to(value, target, defs, seen) for value in node.values())
    if isinstance(node, list):
        return any(_refers_to(item, target, defs, seen) for item in node)
    return False


def _simplify_nullable(node: dict[str, Any]) -> dict[str, Any]:
    options = node.get("anyOf")
    if not (isinstance(options, list) and len(options) == 2 and {"type": "null"} in options):
        return node
    other = options[0] if options[1] == {"type": "null"} else options[1]
    if not isinstance(other.get("type"), str):
        return node  # e.g. a $ref to a recursive model: keep anyOf
    merged = {**other, **{k: v for k, v in node.items() if k != "anyOf"}}
    merged["type"] = [other["type"], "null"]
    if "enum" in merged and None not in merged["enum"]:
        merged["enum"] = [*merged["enum"], None]
    return merged


# ----------------------------------------------------------------------------- argument models


def _is_optional(annotation: Any) -> bool:
    origin = get_origin(annotation)
    if origin is Annotated:
        return _is_optional(get_args(annotation)[0])
    return origin in (Union, types.UnionType) and type(None) in get_args(annotation)


def _split_annotated(annotation: Any) -> tuple[Any, str | None, bool | None]:
    """Split ChatGLM3-style ``Annotated[type, description, required]`` metadata off a type.

    Other metadata (pydantic ``Field``, ``annotated_types`` constraints) stays on the type.
    """
    if get_origin(annotation) is not Annotated:
        return annotation, None, None
    base, *metadata = get_args(annotation)
    description: str | None = None
    required: bool | None = None
    kept: list[Any] = []
    for item in metadata:
        if isinstance(item, str) and description is None:
            description = item
        elif isinstance(item, bool) and required is None:
            required = item
        else:
            kept.append(item)
    return (Annotated[(base, *kept)] if kept else base), description, required


@dataclass(frozen=True)
class _Parameter:
    name: str
    field_name: str


class _PydanticArguments:
    """Validates arguments of a Python function through a pydantic model built from its signature."""

    def __init__(self, tool_name: str, fn: Callable[..., Any], doc_params: dict[str, str]) -> None:
        signature = inspect.signature(fn)
        try:
            hints = typing.get_type_hints(fn, include_extras=True)
        except Exception as exc:  # noqa: BLE001 - unresolvable forward references
            raise ToolDefinitionError(
                f"tool {tool_name!r}: cannot resolve the type hints of {fn.__qualname__} ({exc}); "
                "define the types it uses at module level"
            ) from exc
        fields: dict[str, Any] = {}
        self.parameters: list[_Parameter] = []
        for index, (name, param) in enumerate(signature.parameters.items()):
            if param.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
                raise ToolDefinitionError(
                    f"tool {tool_name!r}: *{name} / **{name} parameters cannot be described to a model; "
                    "list the parameters explicitly"
                )
            if param.kind is inspect.Parameter.POSITIONAL_ONLY:
                raise ToolDefinitionError(
                    f"tool {tool_name!r}: parameter {name!r} is positional-only; tools are called by keyword"
                )
            if name not in hints:
                raise ToolDefinitionError(
                    f"tool {tool_name!r}: parameter {name!r} has no type annotation; annotate it, e.g. "
                    f"{name}: Annotated[str, 'what it is', True]"
                )
            annotation, description, required = _split_annotated(hints[name])
            description = description or doc_params.get(name)
            has_default = param.default is not inspect.Parameter.empty
            if required is True:
                default: Any = ...
            elif has_default:
                default = param.default
            elif required is False or _is_optional(annotation):
                default = None
            else:
                default = ...
            # Internal field names avoid clashes with BaseModel attributes ("schema", "json", ...);
            # the alias is the name the model sees and sends.
            field_name = f"p{index}_{name}"
            fields[field_name] = (annotation, pydantic.Field(default, alias=name, description=description))
            self.parameters.append(_Parameter(name, field_name))
        try:
            self.model = pydantic.create_model(  # type: ignore[call-overload]
                f"{tool_name}_arguments",
                __config__=pydantic.ConfigDict(arbitrary_types_allowed=False, populate_by_name=False),
                **fields,
            )
            schema = self.model.model_json_schema(by_alias=True)
        except (pydantic.PydanticSchemaGenerationError, pydantic.PydanticUserError, TypeError) as exc:
            raise ToolDefinitionError(
                f"tool {tool_name!r}: a parameter type cannot be expressed as JSON Schema ({exc}); use "
                "str/int/float/bool, Literal, Enum, list, dict, Optional, pydantic models or dataclasses"
            ) from exc
        self.schema = _clean_schema(schema)
        self.schema.setdefault("properties", {})
        self.schema.pop("additionalProperties", None)
        self.names = [p.name for p in self.parameters]

    def validate(self, tool_name: str, arguments: dict[str, Any]) -> dict[str, Any]:
        unexpected = [key for key in arguments if key not in self.names]
        problems = [
            f"unexpected argument '{key}' (accepted: {', '.join(self.names) or 'none'})" for key in unexpected
        ]
        try:
            instance = self.model.model_validate({k: v for k, v in arguments.items() if k in self.names})
        except pydantic.ValidationError as exc:
            problems += _describe_pydantic_errors(exc)
            instance = None
        if problems:
            raise ToolArgumentError(tool_name, problems)
        # Attributes, not model_dump(): nested models, dataclasses and enums reach the function as objects.
        return {p.name: getattr(instance, p.field_name) for p in self.parameters}


_TYPE_WORDS = {
    "int": "an integer",
    "float": "a number",
    "string": "a string",
    "bool": "a boolean (true or false)",
    "list": "an array",
    "tuple": "an array",
    "set": "an array",
    "dict": "an object",
    "model": "an object",
    "dataclass": "an object",
}


def _format_location(loc: tuple[Any, ...]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path


def _short_repr(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _describe_pydantic_errors(exc: pydantic.ValidationError) -> list[str]:
    problems: list[str] = []
    seen: set[str] = set()
    for error in exc.errors(include_url=False):
        # Union members appear in loc as type names (e.g. 'int'); keep the field path only.
        loc = tuple(part for part in error["loc"] if isinstance(part, int) or not _looks_like_union_tag(part))
        path = _format_location(loc) or "arguments"
        if path in seen:
            continue
        seen.add(path)
        kind = error["type"]
        got = f", got {_short_repr(error.get('input'))}"
        if kind == "missing":
            problems.append(f"argument '{path}' is required")
        elif kind in ("literal_error", "enum"):
            problems.append(f"'{path}' must be one of {error.get('ctx', {}).get('expected', '?')}{got}")
        elif (word := _TYPE_WORDS.get(kind.split("_")[0])) and kind.endswith(("_type", "_parsing")):
            problems.append(f"'{path}' must be {word}{got}")
        elif kind == "int_from_float":
            problems.append(f"'{path}' must be an integer{got}")
        else:
            message = error["msg"]
            problems.append(f"'{path}': {message[:1].lower()}{message[1:]}{got}")
    return problems


def _looks_like_union_tag(part: Any) -> bool:
    return isinstance(part, str) and (
        part in {"int", "float", "str", "bool", "list", "dict", "none", "null"}
        or part.startswith(("list[", "dict[", "function-", "literal[", "tuple["))
    )


class _JsonSchemaArguments:
    """Validates arguments against a raw JSON Schema (tools declared with `Tool.from_schema`)."""

    def __init__(self, tool_name: str, schema: dict[str, Any]) -> None:
        validator_class = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
        try:
            validator_class.check_schema(schema)
        except jsonschema.SchemaError as exc:
            raise ToolDefinitionError(
                f"tool {tool_name!r}: parameters are not a valid JSON Schema: {exc.message}"
            ) from exc
        self.schema = schema
        self.validator = validator_class(schema)

    def validate(self, tool_name: str, arguments: dict[str, Any]) -> dict[str, Any]:
        errors = sorted(self.validator.iter_errors(arguments), key=lambda e: list(e.absolute_path))
        if errors:
            raise ToolArgumentError(tool_name, [self._describe(e) for e in errors])
        return dict(arguments)

    def _describe(self, error: jsonschema.ValidationError) -> str:
        path = _format_location(tuple(error.absolute_path))
        got = f", got {_short_repr(error.instance)}"
        if error.validator == "required":
            missing = [name for name in error.validator_value if name not in (error.instance or {})]
            prefix = f"{path}." if path else ""
            return "; ".join(f"argument '{prefix}{name}' is required" for name in missing)
        if error.validator == "additionalProperties":
            allowed = set(error.schema.get("properties", {}))
            extra = [key for key in error.instance if key not in allowed]
            return f"unexpected argument(s) {', '.join(repr(e) for e in extra)} (accepted: {', '.join(sorted(allowed)) or 'none'})"
        if error.validator == "type":
            expected = error.validator_value
            expected = " or ".join(expected) if isinstance(expected, list) else expected
            return f"'{path or 'arguments'}' must be of type {expected}{got}"
        if error.validator == "enum":
            return f"'{path}' must be one of {', '.join(repr(v) for v in error.validator_value)}{got}"
        return f"'{path or 'arguments'}': {error.message}"


# ----------------------------------------------------------------------------- results


def _to_text(value: Any) -> str:
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


class _Timeout(Exception):
    pass


def _run_in_daemon_thread(func: Callable[[], Any], timeout: float | None, thread_name: str) -> Any:
    """Run ``func`` in a daemon thread and wait at most ``timeout`` seconds.

    A daemon thread (not a pool worker) so that a tool that never returns cannot keep the
    process from exiting. Python cannot stop a thread: a timed-out call keeps running in
    the background until it returns on its own.
    """
    outcome: dict[str, Any] = {}
    done = threading.Event()
    context = contextvars.copy_context()

    def target() -> None:
        try:
            outcome["value"] = context.run(func)
        except BaseException as exc:  # noqa: BLE001 - handed back to the caller
            outcome["error"] = exc
        finally:
            done.set()

    threading.Thread(target=target, name=thread_name, daemon=True).start()
    if not done.wait(timeout):
        raise _Timeout
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


# ----------------------------------------------------------------------------- Tool


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
        _arguments: _PydanticArguments | _JsonSchemaArguments | None = None,
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
        self._arguments = _arguments or _JsonSchemaArguments(name, parameters)
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
        doc = _parse_docstring(inspect.getdoc(fn))
        arguments = _PydanticArguments(tool_name, fn, doc.params)
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
        if arguments is None:
            arguments = {}
        elif isinstance(arguments, (str, bytes)):
            text = arguments.decode() if isinstance(arguments, bytes) else arguments
            if not text.strip():
                arguments = {}
            else:
                try:
                    arguments = json.loads(text)
                except json.JSONDecodeError as exc:
                    raise ToolArgumentError(
                        self.name,
                        [
                            f"arguments are not valid JSON ({exc}); send a JSON object such as {self._example()}"
                        ],
                    ) from exc
        if not isinstance(arguments, dict):
            raise ToolArgumentError(
                self.name,
                [f"arguments must be a JSON object, got {type(arguments).__name__} {_short_repr(arguments)}"],
            )
        return self._arguments.validate(self.name, arguments)

    def _example(self) -> str:
        names = list(self.parameters.get("properties", {}))[:2]
        return "{" + ", ".join(f'"{n}": ...' for n in names) + "}"

    # -- execution

    def invoke(self, arguments: dict[str, Any] | str | None = None) -> ToolResult:
        """Validate and run the tool; every tool-side failure comes back as an error `ToolResult`."""
        self._require_executable()
        started = time.perf_counter()
        try:
            kwargs = self.validate(arguments)
        except ToolArgumentError as exc:
            return self._error(str(exc), started)
        try:
            if self.is_async:
                value = self._invoke_async_from_sync(kwargs)
            elif self.timeout is None:
                value = self.fn(**kwargs)  # type: ignore[misc]
            else:
                value = _run_in_daemon_thread(
                    functools.partial(self.fn, **kwargs),
                    self.timeout,
                    f"tool-{self.name}",  # type: ignore[arg-type]
                )
        except _Timeout:
            return self._timed_out(started)
        except (Exception, SystemExit) as exc:
            return self._exception(exc, started)
        return self._success(value, started)

    async def ainvoke(self, arguments: dict[str, Any] | str | None = None) -> ToolResult:
        """`invoke` for async callers: async tools are awaited, sync ones run in a daemon thread."""
        self._require_executable()
        started = time.perf_counter()
        try:
            kwargs = self.validate(arguments)
        except ToolArgumentError as exc:
            return self._error(str(exc), started)
        try:
            if self.is_async:
                value = await self._with_timeout(self.fn(**kwargs))  # type: ignore[misc]
            else:
                value = await self._with_timeout(self._sync_in_thread(kwargs))
        except _Timeout:
            return self._timed_out(started)
        except (Exception, SystemExit) as exc:
            return self._exception(exc, started)
        return self._success(value, started)

    def _require_executable(self) -> None:
        if self.fn is None:
            raise ToolNotExecutableError(
                f"tool {self.name!r} is declared by a schema only (Tool.from_schema without fn); "
                "the caller must execute it, or pass fn= to make it executable"
            )

    async def _with_timeout(self, awaitable: Awaitable[Any]) -> Any:
        """Await under the tool's timeout; our deadline raises `_Timeout`, a tool's own TimeoutError passes through."""
        scope = asyncio.timeout(self.timeout)
        try:
            async with scope:
                return await awaitable
        except TimeoutError:
            if scope.expired():
                raise _Timeout from None
            raise

    def _invoke_async_from_sync(self, kwargs: dict[str, Any]) -> Any:
        async def run() -> Any:
            return await self._with_timeout(self.fn(**kwargs))  # type: ignore[misc]

        # A fresh event loop in a worker thread: works whether or not the caller's thread runs a loop.
        guard = None if self.timeout is None else self.timeout + 1.0
        return _run_in_daemon_thread(lambda: asyncio.run(run()), guard, f"tool-{self.name}")

    def _sync_in_thread(self, kwargs: dict[str, Any]) -> Awaitable[Any]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        context = contextvars.copy_context()

        def deliver(setter: Callable[[Any], None], value: Any) -> None:
            if not future.done():
                setter(value)

        def target() -> None:
            try:
                value = context.run(self.fn, **kwargs)  # type: ignore[arg-type]
                callback, payload = future.set_result, value
            except BaseException as exc:  # noqa: BLE001 - handed to the awaiting coroutine
                callback, payload = future.set_exception, exc
            try:
                loop.call_soon_threadsafe(deliver, callback, payload)
            except RuntimeError:
                pass  # the loop closed after a timeout; nobody is waiting any more

        threading.Thread(target=target, name=f"tool-{self.name}", daemon=True).start()
        return future

    def _success(self, value: Any, started: float) -> ToolResult:
        content, truncated = truncate_text(_to_text(value), self.max_result_chars)
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


# ----------------------------------------------------------------------------- registry


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
