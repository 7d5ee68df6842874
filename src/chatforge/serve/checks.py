"""Checking a reply against what its request asked (a tool call, JSON, a JSON Schema) and
asking once more when it does not comply.

A local model is not constrained to call a tool or to write JSON here: a reply that does
not comply is asked for once more (the failed reply and a short correction are added to
the conversation); if the second reply fails too, it is returned as it is
(docs/serving.md).
"""

from __future__ import annotations

import json
import re
from typing import Any

import jsonschema

from chatforge.messages import Message, Role
from chatforge.serve.plan import ChatPlan

_FENCED_JSON = re.compile(r"```(?:json)?\s*\n(.*?)\n\s*```", re.S)


def complies(plan: ChatPlan, message: Message) -> str | None:
    """Why ``message`` does not do what the request asked (None when it does)."""
    if plan.force_tool is not None:
        if not message.tool_calls:
            return "The reply did not call a function."
        if plan.force_tool != "*" and message.tool_calls[0].name != plan.force_tool:
            return f"The reply did not call `{plan.force_tool}`."
    if plan.json_mode and not message.tool_calls:
        data = extract_json(message.content)
        if data is None:
            return "The reply was not one valid JSON object."
        if plan.json_schema is not None:
            try:
                jsonschema.validate(data, plan.json_schema)
            except jsonschema.ValidationError as err:
                return f"The JSON does not follow the schema: {err.message}."
    return None


def extract_json(text: str) -> Any:
    """The JSON object a reply holds: the whole text, or a fenced ```json block in it."""
    candidates = [text.strip()] + [m.group(1) for m in _FENCED_JSON.finditer(text)]
    for candidate in candidates:
        try:
            data = json.loads(candidate)
        except (json.JSONDecodeError, ValueError):
            continue
        if isinstance(data, dict):
            return data
    return None


def normalise_json_reply(plan: ChatPlan, message: Message) -> None:
    """In JSON mode, a reply that wrapped its object in a code fence is returned as the bare object."""
    if plan.json_mode and not message.tool_calls:
        data = extract_json(message.content)
        if data is not None and message.content.strip() != "" and _not_bare(message.content):
            message.content = json.dumps(data, ensure_ascii=False)


def _not_bare(text: str) -> bool:
    try:
        json.loads(text)
    except (json.JSONDecodeError, ValueError):
        return True
    return False


def correction(plan: ChatPlan, reply: Message, reason: str) -> list[Message]:
    """The conversation asking once more after a reply that did not comply."""
    ask = f"{reason} {' '.join(plan.extra_instructions)}"
    return [
        *plan.messages,
        Message(Role.ASSISTANT, reply.content, tool_calls=list(reply.tool_calls)),
        Message(Role.USER, ask),
    ]
