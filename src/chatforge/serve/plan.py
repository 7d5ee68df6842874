"""From an OpenAI request to what chatforge generates: messages, tools, sampling
parameters, and what ``tool_choice`` and ``response_format`` ask of the reply.

``tool_choice="required"`` / a named function and ``response_format`` add an instruction to
the system prompt. On the local engines the reply is then constrained to what was asked
(:func:`add_grammar`, chatforge.constrain): valid by construction. Where it cannot be (a
remote engine, constraints off, a schema the grammar engine cannot compile),
:mod:`chatforge.serve.checks` checks the reply against the plan and asks once more
(docs/serving.md).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import jsonschema

from chatforge.constrain.grammars import GrammarError
from chatforge.engines.base import SAMPLING_SETTINGS, sampling_options
from chatforge.messages import Message, Role, from_openai, normalize_tool_schema
from chatforge.serve.errors import APIError
from chatforge.serve.protocol import ChatCompletionRequest, NamedToolChoice, _Sampling

if TYPE_CHECKING:
    from chatforge.chat import ChatModel

log = logging.getLogger(__name__)

MIN_TOP_P = 1e-6


@dataclass
class ChatPlan:
    messages: list[Message]
    tools: list[dict[str, Any]] | None
    params: dict[str, Any]
    force_tool: str | None = None  # "*" for any tool, else the function name
    json_schema: dict[str, Any] | None = None
    json_mode: bool = False
    parallel_tool_calls: bool = True
    n: int = 1
    extra_instructions: list[str] = field(default_factory=list)
    grammar: str | None = None  # what the reply is constrained to (add_grammar)

    @property
    def guaranteed(self) -> bool:
        """The grammar makes the reply what was asked: a call when one is required, JSON
        when JSON is asked for (with tools offered, only the calls are constrained)."""
        return self.grammar is not None and (
            not self.json_mode or self.force_tool is not None or not self.tools
        )

    @property
    def buffered(self) -> bool:
        """Replies that must be checked before anyone sees them (then maybe asked again)."""
        return (self.force_tool is not None or self.json_mode) and not self.guaranteed


def sampling_kwargs(req: _Sampling, max_tokens: int | None, context_length: int) -> dict[str, Any]:
    """ChatModel.generate keyword arguments from the OpenAI sampling fields."""
    params: dict[str, Any] = {}
    requested = getattr(req, "max_completion_tokens", None) or req.max_tokens
    if requested is not None and requested > context_length:
        # OpenAI answers 400 for a max_tokens beyond what the model can produce; so do we
        # (a prompt plus max_tokens beyond the window is still cut at the window's end).
        name = "max_completion_tokens" if getattr(req, "max_completion_tokens", None) else "max_tokens"
        raise APIError(
            400,
            f"{name}: {requested} is too large; this model supports at most {context_length} tokens "
            "(its context window)",
            param=name,
            code="invalid_value",
        )
    params.update(sampling_options(req.model_dump(include={"temperature", *SAMPLING_SETTINGS})))
    if req.top_p is not None:
        # A top_p below float32's resolution rounds to 0 in the engine, which then drops every
        # token (NaN probabilities, a 500). A tiny top_p means "only the likeliest token"; so does this.
        params["top_p"] = max(req.top_p, MIN_TOP_P)
    if req.stop is not None:
        stops = [req.stop] if isinstance(req.stop, str) else list(req.stop)
        if len(stops) > 4 or not all(stops):
            raise APIError(400, "stop: up to 4 non-empty strings", param="stop", code="invalid_value")
        params["stop"] = stops
    if max_tokens is not None:
        params["max_new_tokens"] = max_tokens
    else:
        params["max_length"] = context_length  # the rest of the context window
    return params


def build_plan(req: ChatCompletionRequest, context_length: int, default_max_tokens: int | None) -> ChatPlan:
    messages = from_openai(req.messages)
    max_tokens = req.max_completion_tokens or req.max_tokens or default_max_tokens
    plan = ChatPlan(
        messages=messages,
        tools=None,
        params=sampling_kwargs(req, max_tokens, context_length),
        parallel_tool_calls=req.parallel_tool_calls,
        n=req.n,
    )
    choice = req.tool_choice
    if req.tools and choice != "none":
        tools = [normalize_tool_schema(t.model_dump(exclude_none=True)) for t in req.tools]
        for i, tool in enumerate(tools):
            check_parameters_schema(tool["function"]["parameters"], f"tools[{i}].function.parameters")
        if isinstance(choice, NamedToolChoice):
            tools = [t for t in tools if t["function"]["name"] == choice.function.name]
            if not tools:
                raise APIError(
                    400,
                    f"tool_choice.function.name: {choice.function.name!r} is not one of the tools given",
                    param="tool_choice",
                    code="invalid_value",
                )
            plan.force_tool = choice.function.name
            plan.extra_instructions.append(
                f"In this reply you must call the function `{choice.function.name}`."
            )
        elif choice == "required":
            plan.force_tool = "*"
            plan.extra_instructions.append("In this reply you must call one of the functions.")
        plan.tools = tools
    elif isinstance(choice, NamedToolChoice) or choice == "required":
        raise APIError(400, "tool_choice: requires tools", param="tool_choice", code="invalid_value")
    fmt = req.response_format
    if fmt is not None and fmt.type != "text":
        plan.json_mode = True
        if fmt.type == "json_schema":
            if fmt.json_schema is None or fmt.json_schema.schema_ is None:
                raise APIError(
                    400,
                    "response_format.json_schema.schema: required for type json_schema",
                    param="response_format",
                    code="invalid_value",
                )
            plan.json_schema = fmt.json_schema.schema_
            check_parameters_schema(plan.json_schema, "response_format.json_schema.schema")
            plan.extra_instructions.append(
                "Reply with one JSON object that follows this JSON schema, and nothing else: "
                + json.dumps(plan.json_schema, ensure_ascii=False)
            )
        else:
            plan.extra_instructions.append("Reply with one valid JSON object and nothing else.")
    if plan.extra_instructions:
        plan.messages = with_instructions(plan.messages, " ".join(plan.extra_instructions))
    return plan


def check_parameters_schema(schema: dict[str, Any], param: str) -> None:
    """A 400 naming ``param`` unless ``schema`` is a valid JSON Schema (by its own draft's meta-schema)."""
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as err:
        where = "/".join(str(p) for p in err.absolute_path)
        raise APIError(
            400,
            f"{param}: not a valid JSON Schema ({err.message}{f' at {where}' if where else ''})",
            param=param,
            code="invalid_value",
        ) from None


def with_instructions(messages: list[Message], text: str) -> list[Message]:
    """The conversation with ``text`` added to its system message (one is made if needed)."""
    out = [m.copy() for m in messages]
    if out and out[0].role is Role.SYSTEM:
        out[0].content = f"{out[0].content}\n\n{text}" if out[0].content else text
    else:
        out.insert(0, Message(Role.SYSTEM, text))
    return out


def add_grammar(plan: ChatPlan, model: ChatModel) -> None:
    """Constrain the plan's reply where the model can: tool calls valid against the tools'
    schemas, a required call, JSON following the asked schema. A schema the grammar engine
    cannot compile leaves this reply unconstrained (then checked, see module doc), with a
    warning naming the tool or schema and the feature."""
    try:
        plan.grammar = model.grammar_for(
            plan.tools,
            force=plan.force_tool,
            parallel=plan.parallel_tool_calls,
            json_mode=plan.json_mode,
            json_schema=plan.json_schema,
        )
    except GrammarError as err:
        where = "response_format.json_schema.schema: " if plan.json_mode and not plan.tools else ""
        log.warning("decoding this reply without constraints: %s%s", where, err)
        plan.grammar = None
