"""Tool arguments, checked before the call: the model's JSON text parsed into a dict, then
validated by a pydantic model built from a function's signature (`PydanticArguments`) or
by a raw JSON Schema (`JsonSchemaArguments`), with errors that name the field and say what
was expected (`ToolArgumentError`).

Nothing here evaluates model output as code: arguments are parsed with `json` and
validated with pydantic / jsonschema.
"""

from __future__ import annotations

import inspect
import json
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jsonschema
import pydantic

from chatforge.agent.tools.errors import ToolArgumentError, ToolDefinitionError
from chatforge.agent.tools.schema import clean_schema, is_optional, split_annotated

__all__ = ["JsonSchemaArguments", "PydanticArguments", "parse_arguments"]


def parse_arguments(tool_name: str, arguments: Any, parameters: dict[str, Any]) -> dict[str, Any]:
    """The arguments as a dict: a dict as is, JSON text parsed (``""`` / ``None`` mean none).

    ``parameters`` (the tool's JSON Schema) only feeds the example in the error message.
    Raises `ToolArgumentError` when the text is not JSON or not a JSON object.
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
                    tool_name,
                    [
                        f"arguments are not valid JSON ({exc}); send a JSON object such as {_example(parameters)}"
                    ],
                ) from exc
    if not isinstance(arguments, dict):
        raise ToolArgumentError(
            tool_name,
            [f"arguments must be a JSON object, got {type(arguments).__name__} {_short_repr(arguments)}"],
        )
    return arguments


def _example(parameters: dict[str, Any]) -> str:
    names = list(parameters.get("properties", {}))[:2]
    return "{" + ", ".join(f'"{n}": ...' for n in names) + "}"


# ----------------------------------------------------------------------------- from a signature


@dataclass(frozen=True)
class _Parameter:
    name: str
    field_name: str


class PydanticArguments:
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
            annotation, description, required = split_annotated(hints[name])
            description = description or doc_params.get(name)
            has_default = param.default is not inspect.Parameter.empty
            if required is True:
                default: Any = ...
            elif has_default:
                default = param.default
            elif required is False or is_optional(annotation):
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
        self.schema = clean_schema(schema)
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


# ----------------------------------------------------------------------------- from a JSON Schema


class JsonSchemaArguments:
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


# ----------------------------------------------------------------------------- error messages


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
