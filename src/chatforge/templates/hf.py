"""The model's own Hugging Face chat template (Jinja), tools included.

Rendering goes through ``tokenizer.apply_chat_template`` so that the prompt is exactly
what the model was trained on. To know which text is message content (encoded
literally) and which is an assistant's output (trained), each message's content is
first replaced by a unique placeholder; the rendered text is then cut at the
placeholders and at the assistant turns' boundaries, found by rendering prefixes of
the conversation.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from chatforge.messages import Message, Role
from chatforge.templates.base import Segment, StreamParser, Template, TemplateError
from chatforge.templates.toolcall_text import TAG_OPEN, safe_prefix_length, split_calls
from chatforge.tokenizer import Tokenizer

_PLACEHOLDER = "\x1eCF{}\x1f"
_PLACEHOLDER_RE = re.compile("\x1eCF(\\d+)\x1f")


CHATML_TEMPLATE = """
{%- if tools %}
{{- '<|im_start|>system\n' }}
{%- if messages and messages[0].role == 'system' %}{{- messages[0].content + '\n\n' }}{%- endif %}
{{- '# Tools\n\nYou can call these functions. Each is described by a JSON schema:\n<tools>' }}
{%- for tool in tools %}{{- '\n' + (tool | tojson) }}{%- endfor %}
{{- '\n</tools>\n\nTo call one, answer with a JSON object holding its name and arguments inside tags:\n' }}
{{- '<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>\n' }}
{%- elif messages and messages[0].role == 'system' %}
{{- '<|im_start|>system\n' + messages[0].content + '<|im_end|>\n' }}
{%- endif %}
{%- for m in messages %}
{%- if m.role == 'system' %}
{%- elif m.role == 'tool' %}
{%- if loop.first or messages[loop.index0 - 1].role != 'tool' %}{{- '<|im_start|>user' }}{%- endif %}
{{- '\n<tool_response>\n' + m.content + '\n</tool_response>' }}
{%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}{{- '<|im_end|>\n' }}{%- endif %}
{%- elif m.role == 'assistant' and m.tool_calls %}
{{- '<|im_start|>assistant' }}
{%- if m.content %}{{- '\n' + m.content }}{%- endif %}
{%- for c in m.tool_calls %}
{{- '\n<tool_call>\n{"name": "' + c.function.name + '", "arguments": ' + (c.function.arguments | tojson) + '}\n</tool_call>' }}
{%- endfor %}
{{- '<|im_end|>\n' }}
{%- else %}
{{- '<|im_start|>' + m.role + '\n' + m.content + '<|im_end|>\n' }}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}
"""
"""A ChatML template with tools, for tokenizers that carry none (and for tests)."""


OBSERVATION_HINT = (
    "This is the result of {name}. Now answer the user's question in plain language, using this result."
)
"""Appended to every tool result: small models otherwise tend to repeat the call instead of answering.
It stays unconditional: a failed call's observation carries its own instructions (the agent
loop writes them), and hedged wordings here made small models repeat calls that had worked."""


class HFTemplate(Template):
    name = "hf"

    def __init__(
        self,
        tokenizer: Tokenizer,
        chat_template: str | None = None,
        observation_hint: str | None = OBSERVATION_HINT,
    ) -> None:
        super().__init__(tokenizer)
        self.observation_hint = observation_hint
        self.chat_template = chat_template or getattr(tokenizer, "chat_template", None)
        if not self.chat_template:
            raise TemplateError(
                "this tokenizer has no chat template; pass template='chatml' or 'react', "
                "or a model directory whose tokenizer_config.json / chat_template.jinja defines one"
            )

    @property
    def supports_tools(self) -> bool:
        return "tools" in self.chat_template

    @property
    def call_format(self) -> str | None:
        return "tagged" if TAG_OPEN in self.chat_template else "json"

    @property
    def stop_strings(self) -> list[str]:
        stops = []
        eos = self.tokenizer.eos_token
        if eos:
            stops.append(eos)
        for tok in ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>"):
            if tok in self.chat_template and tok not in stops:
                stops.append(tok)
        return stops

    # -- rendering ----------------------------------------------------------
    def _apply(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None, gen: bool) -> str:
        try:
            return self.tokenizer.apply_chat_template(
                messages,
                tools=tools,
                chat_template=self.chat_template,
                add_generation_prompt=gen,
                tokenize=False,
            )
        except Exception as err:  # Jinja raises many kinds; all mean the same to the user
            raise TemplateError(f"the model's chat template failed on this conversation: {err}") from err

    def _wire(self, messages: Sequence[Message], placeholders: bool) -> list[dict[str, Any]]:
        out = []
        call_names = {c.id: c.name for m in messages for c in m.tool_calls}
        for i, m in enumerate(messages):
            d = m.to_openai()
            d["content"] = _PLACEHOLDER.format(i) if placeholders and m.content else m.content
            if m.role is Role.OBSERVATION and self.observation_hint:
                name = m.name or call_names.get(m.tool_call_id or "") or "the tool"
                d["content"] += "\n\n" + self.observation_hint.format(name=name)
            if d.get("tool_calls"):
                # Templates expect arguments as a mapping (they serialise it themselves).
                for call, tc in zip(d["tool_calls"], m.tool_calls, strict=True):
                    call["function"]["arguments"] = tc.arguments
            out.append(d)
        return out

    def segments(
        self, messages: Sequence[Message], tools: list[dict[str, Any]] | None, add_generation_prompt: bool
    ) -> list[Segment]:
        wire = self._wire(messages, placeholders=True)
        full = self._apply(wire, tools, add_generation_prompt)
        # Assistant outputs: from the generation prompt to the end-of-turn marker.
        outputs: list[tuple[int, int, int]] = []
        for i, m in enumerate(messages):
            if m.role is not Role.ASSISTANT or i == 0:
                continue
            before = self._apply(wire[:i], tools, True)
            upto = self._apply(wire[: i + 1], tools, False)
            if not (full.startswith(before) and full.startswith(upto) and len(upto) >= len(before)):
                raise TemplateError(
                    "the chat template renders a conversation differently from its beginning "
                    f"(at message {i}); choose template='chatml' or 'react' for this model"
                )
            end = self._turn_end(upto, len(before))
            outputs.append((len(before), end, i))
        return _cut(full, outputs, list(messages))

    def _turn_end(self, text: str, start: int) -> int:
        """End of an assistant turn's trained part: its end-of-turn marker, included."""
        best = -1
        for stop in self.stop_strings:
            at = text.rfind(stop, start)
            if at != -1:
                best = max(best, at + len(stop))
        return best if best != -1 else len(text)

    # -- parsing ------------------------------------------------------------
    def parse(self, text: str, tools: list[dict[str, Any]] | None = None) -> Message:
        content, calls = split_calls(text, tools)
        # A plain reply is kept exactly as generated, so it renders back to the same tokens.
        return Message(Role.ASSISTANT, content if calls else text, tool_calls=calls)

    def stream_parser(self, tools: list[dict[str, Any]] | None = None) -> StreamParser:
        return _JSONCallStreamParser(self, tools)


class _JSONCallStreamParser(StreamParser):
    def __init__(self, template: Template, tools: list[dict[str, Any]] | None) -> None:
        super().__init__()
        self.template = template
        self.tools = tools

    def visible(self, text: str, final: bool) -> str:
        return text[: safe_prefix_length(text, self.tools, final)]

    def parse_final(self, text: str) -> Message:
        return self.template.parse(text, self.tools)


def _cut(full: str, outputs: list[tuple[int, int, int]], messages: list[Message]) -> list[Segment]:
    """Segments of ``full`` (with placeholders) cut at output bounds and placeholders."""
    bounds = {0, len(full)}
    for start, end, _ in outputs:
        bounds.update((start, end))
    for match in _PLACEHOLDER_RE.finditer(full):
        bounds.update((match.start(), match.end()))
    points = sorted(bounds)
    segments = []
    for a, b in zip(points, points[1:], strict=False):
        piece = full[a:b]
        owner = next(((i, True) for s, e, i in outputs if s <= a and b <= e), (None, False))
        match = _PLACEHOLDER_RE.fullmatch(piece)
        if match:
            idx = int(match.group(1))
            m = messages[idx]
            segments.append(Segment(m.content, message=idx, output=True, literal=True, ids=m.token_ids))
        else:
            if _PLACEHOLDER_RE.search(piece):
                raise TemplateError("the chat template altered message content; it cannot be rendered safely")
            segments.append(Segment(piece, message=owner[0], output=owner[1]))
    return segments
