"""From a Python signature to a prompt-sized JSON Schema: Google-style docstring parsing,
ChatGLM3-style ``Annotated[type, description, required]`` metadata, and the cleaning of
pydantic's schema (inlined ``$defs``, no titles, ``X | None`` as ``{"type": [X, "null"]}``)."""

from __future__ import annotations

import inspect
import re
import types
from dataclasses import dataclass
from typing import Annotated, Any, Union, get_args, get_origin

__all__ = ["Docstring", "clean_schema", "is_optional", "parse_docstring", "split_annotated"]

_DOCSTRING_SECTION = re.compile(
    r"^(Args|Arguments|Parameters|Keyword Args|Keyword Arguments|Returns|Return|Yields|Raises|"
    r"Examples?|Notes?|Warnings?|See Also|Attributes|Todo|References)\s*:\s*$"
)
_ARG_SECTIONS = {"Args", "Arguments", "Parameters", "Keyword Args", "Keyword Arguments"}
_DOC_ARG_LINE = re.compile(r"^(\*{0,2}[A-Za-z_][A-Za-z0-9_]*)\s*(?:\(([^)]*)\))?\s*:\s*(.*)$")
_VALUE_KEYWORDS = frozenset({"default", "enum", "const", "examples", "example"})


# ----------------------------------------------------------------------------- docstrings


@dataclass(frozen=True)
class Docstring:
    """A docstring's summary and its ``Args:`` descriptions by parameter name."""

    summary: str
    params: dict[str, str]


def parse_docstring(doc: str | None) -> Docstring:
    """Summary (everything before the first section) and ``Args:`` descriptions of a Google-style docstring."""
    if not doc:
        return Docstring("", {})
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
    return Docstring(summary, params)


# ----------------------------------------------------------------------------- Annotated metadata


def is_optional(annotation: Any) -> bool:
    origin = get_origin(annotation)
    if origin is Annotated:
        return is_optional(get_args(annotation)[0])
    return origin in (Union, types.UnionType) and type(None) in get_args(annotation)


def split_annotated(annotation: Any) -> tuple[Any, str | None, bool | None]:
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


# ----------------------------------------------------------------------------- schema cleaning


def clean_schema(schema: dict[str, Any]) -> dict[str, Any]:
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
