"""What a reply may be, as a grammar: text or valid tool calls when tools are offered, a
call when one is required, JSON when JSON is asked for.

Grammars are written in llguidance's Lark dialect; every JSON Schema inside them is
compiled by llguidance itself (``%json``), never here. A reply to a request with tools is
one of:

- text: anything that does not start like a call (``{``, ``[{``) and holds no fenced
  ```json block or ``<tool_call>`` tag;
- optional text, then one or more ``<tool_call>`` blocks (the model's own format, when
  its chat template has one);
- optional text, then one fenced ```json block holding a call or a list of calls: the form
  small models such as Qwen2.5-Coder-0.5B often prefer, now valid by construction;
- a bare call object, or a list of them.

Each call is ``{"name": NAME, "arguments": {...}}`` with the arguments valid against that
tool's parameters. Parameter objects that list their properties and do not say otherwise
get ``additionalProperties: false`` (no invented keys, as OpenAI's strict mode). Calls are
written as ``json.dumps`` writes them (``", "`` and ``": "``, no other whitespace), which is
how the chat template shows earlier calls to the model.
"""

from __future__ import annotations

import json
from typing import Any

TAG_OPEN = "<tool_call>"
TAG_CLOSE = "</tool_call>"

JSON_STYLE = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
"""llguidance's JSON options: the separators ``json.dumps`` uses and no free whitespace (a
small model otherwise can loop on newlines inside an object)."""

# Text that is not a call in disguise. "```" opens code freely, but not a fenced JSON block
# (that is the fenced call form below); a reply may not start with an object or a list.
_TEXT = (
    r"/(.|\n)+/"
    r" & ~/(.|\n)*```[ \t]*json(.|\n)*/"
    r" & ~/(.|\n)*```[ \t]*\n[ \t\n]*[\{\[](.|\n)*/"
    r" & ~/[ \t\n]*[\{\[](.|\n)*/"
)
_NO_TAG_TEXT = r" & ~/(.|\n)*<tool_call>(.|\n)*/"


class GrammarError(ValueError):
    """A schema or grammar the grammar engine cannot compile; the text names which and why."""


def tighten(schema: Any) -> Any:
    """``schema`` with ``additionalProperties: false`` on every object schema that lists its
    properties and says nothing about others (nested ones too)."""
    if isinstance(schema, list):
        return [tighten(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key, value in schema.items():
        if key in ("properties", "$defs", "definitions", "patternProperties", "dependentSchemas"):
            out[key] = {k: tighten(v) for k, v in value.items()} if isinstance(value, dict) else value
        elif key in ("items", "additionalItems", "prefixItems", "anyOf", "oneOf", "allOf", "not", "contains"):
            out[key] = tighten(value)
        else:
            out[key] = value
    if (
        isinstance(out.get("properties"), dict)
        and "additionalProperties" not in out
        and "patternProperties" not in out
        and "unevaluatedProperties" not in out
    ):
        out["additionalProperties"] = False
    return out


def call_schema(tool: dict[str, Any]) -> dict[str, Any]:
    """The JSON Schema of one call of ``tool`` (an OpenAI tool schema)."""
    fn = tool.get("function", tool)
    parameters = fn.get("parameters") or {"type": "object", "properties": {}}
    return {
        "type": "object",
        "properties": {"name": {"const": fn["name"]}, "arguments": tighten(parameters)},
        "required": ["name", "arguments"],
        "additionalProperties": False,
        "x-guidance": JSON_STYLE,
    }


def tag(text: str, special: bool) -> str:
    """``text`` in a grammar: a special token by name, or a string."""
    return text if special else json.dumps(text)


def tool_grammar(
    tools: list[dict[str, Any]],
    *,
    tags: tuple[str, str] | None = None,
    force: str | None = None,
    parallel: bool = True,
) -> str:
    """The grammar of a reply when ``tools`` are offered.

    ``tags``: the opening and closing tags of the model's ``<tool_call>`` blocks, as
    :func:`tag` writes them (None: the template has no tags). ``force``: a call is required,
    of the named tool or (``"*"``) of any. ``parallel``: several calls may be made at once.
    """
    chosen = [t for t in tools if force in (None, "*") or t.get("function", t)["name"] == force]
    if not chosen:
        raise GrammarError(f"no tool named {force!r} is offered")
    free = force is None  # text is a valid reply, and may come before the calls
    calls = '(call | "[" call (", " call)* "]")' if parallel else "call"
    rules = [
        f"call: {' | '.join(f'call_{i}' for i in range(len(chosen)))}",
        *(f"call_{i}: %json {json.dumps(call_schema(t), ensure_ascii=False)}" for i, t in enumerate(chosen)),
        f'fenced_calls: {"(text_then_fence | fence)" if free else "fence"} {calls} "\\n```"',
        'fence: "```json\\n"',
        f"bare_calls: {calls}",
    ]
    forms = ["fenced_calls", "bare_calls"]
    text = _TEXT
    if tags is not None:
        opening, closing = tags
        special = not opening.startswith('"')
        rules.append(f'tagged: {opening} "\\n" call "\\n" {closing}')
        rules.append('tagged_calls: tagged ("\\n" tagged)*' if parallel else "tagged_calls: tagged")
        # A special token ends the text lexeme cleanly; a tag written as text could not.
        forms.insert(0, "TEXT? tagged_calls" if free and special else "tagged_calls")
        if not special:
            text += _NO_TAG_TEXT
    if free:
        forms.insert(0, "TEXT")
        # Text, then a fenced call: one lazy lexeme that ends at the first fence.
        rules.append('text_then_fence[lazy]: TEXT "```json\\n"')
        rules.append(f"TEXT: {text}")
    return "%llguidance {}\nstart: " + " | ".join(forms) + "\n" + "\n".join(rules) + "\n"


def text_grammar(tags: tuple[str, str] | None = None) -> str:
    """The grammar of a reply that is text only, with tools offered: text as
    :func:`tool_grammar` allows it, no call in any form."""
    text = _TEXT + (_NO_TAG_TEXT if tags is not None and tags[0].startswith('"') else "")
    return f"%llguidance {{}}\nstart: TEXT\nTEXT: {text}\n"


def json_grammar(schema: dict[str, Any] | None) -> str:
    """The grammar of a reply that is one JSON object (following ``schema`` when given)."""
    body = dict(schema) if schema is not None else {"type": "object"}
    body.setdefault("x-guidance", JSON_STYLE)
    return "%llguidance {}\nstart: %json " + json.dumps(body, ensure_ascii=False) + "\n"


def check_grammar(grammar: str, view: Any = None) -> None:
    """Raise :class:`GrammarError` with llguidance's message when ``grammar`` does not compile
    (for the tokenizer ``view``, when given: its special tokens must exist)."""
    import llguidance  # the Rust grammar engine, loaded only when constraints are used

    failed, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar, view)
    if failed:
        raise GrammarError(messages[0] if messages else "the grammar does not compile")


def check_tools(tools: list[dict[str, Any]]) -> None:
    """Raise :class:`GrammarError` naming the first tool whose schema cannot be compiled, and why."""
    import llguidance

    for i, tool in enumerate(tools):
        name = tool.get("function", tool).get("name")
        grammar = llguidance.LLMatcher.grammar_from_json_schema(call_schema(tool))
        failed, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar)
        if failed:
            raise GrammarError(f"tools[{i}] ({name}): {_first_line(messages)}")


def check_schema(schema: dict[str, Any], where: str) -> None:
    """Raise :class:`GrammarError` when the JSON Schema at ``where`` cannot be compiled."""
    import llguidance

    grammar = llguidance.LLMatcher.grammar_from_json_schema(schema)
    failed, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar)
    if failed:
        raise GrammarError(f"{where}: {_first_line(messages)}")


def _first_line(messages: list[str]) -> str:
    return (messages[0] if messages else "cannot be compiled").strip().splitlines()[0]
