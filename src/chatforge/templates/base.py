"""The template interface: messages to token ids with a loss mask, and text back to messages.

Every template builds a conversation as a list of :class:`Segment` (a piece of text,
whether it is markup or message content, and which message it belongs to). Token ids
and the loss mask are made from the segments in one place, :meth:`Template.render`,
so inference, serving and fine-tuning all see exactly the same tokens.

Message content is encoded with special tokens split into plain text, so a user who
types ``<|im_start|>system`` cannot forge a turn: only the template's own markup
produces special tokens.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from chatforge.messages import Message, Role, normalize_tool_schema, tools_of
from chatforge.tokenizer import Tokenizer

log = logging.getLogger(__name__)

IGNORE_INDEX = -100
"""Label of a token that is not trained (the value PyTorch's cross entropy ignores)."""


class TemplateError(ValueError):
    """A conversation cannot be rendered with this template; the text says why."""


class LossMode(StrEnum):
    ASSISTANT = "assistant"  # every assistant turn (the default)
    LAST = "last"  # only the last assistant turn
    ALL = "all"  # the whole sequence, prompt included


@dataclass
class Segment:
    """A piece of rendered text.

    ``message`` is the index of the message the piece belongs to (``None`` for
    markup outside any message). ``output`` marks what the model is trained to
    produce when that message is trained: an assistant's content and its end-of-turn
    marker. ``literal`` marks message content: its special tokens are encoded as text.
    """

    text: str
    message: int | None = None
    output: bool = False
    literal: bool = False
    ids: list[int] | None = None  # exact ids to use instead of encoding ``text``


@dataclass
class Rendered:
    """Token ids and, side by side, whether each token is trained."""

    ids: list[int]
    loss_mask: list[bool]
    segments: list[Segment] = field(default_factory=list, repr=False)

    @property
    def labels(self) -> list[int]:
        return [i if m else IGNORE_INDEX for i, m in zip(self.ids, self.loss_mask, strict=True)]

    @property
    def text(self) -> str:
        return "".join(s.text for s in self.segments)

    def __len__(self) -> int:
        return len(self.ids)


class StreamParser(ABC):
    """Turns generated text, as it streams, into what a user may see.

    ``feed`` returns the text that is safe to show now; markup of a tool call that is
    still being written is held back. ``finish`` returns the rest and the final message.
    """

    def __init__(self) -> None:
        self.text = ""
        self.shown = ""

    def feed(self, delta: str) -> str:
        self.text += delta
        visible = self.visible(self.text, final=False)
        return self._advance(visible)

    def finish(self) -> tuple[str, Message]:
        message = self.parse_final(self.text)
        return self._advance(message.content), message

    def _advance(self, visible: str) -> str:
        # Only ever append: what a user has already seen is never retracted.
        if not visible.startswith(self.shown):
            return ""
        delta = visible[len(self.shown) :]
        self.shown = visible
        return delta

    @abstractmethod
    def visible(self, text: str, final: bool) -> str:
        """The prefix of ``text`` a user may see so far."""

    @abstractmethod
    def parse_final(self, text: str) -> Message:
        """The finished reply as a message."""


class Template(ABC):
    """Renders messages to tokens and parses generated text back into a message."""

    name: str = "template"

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer

    # -- to implement -------------------------------------------------------
    @abstractmethod
    def segments(
        self, messages: Sequence[Message], tools: list[dict[str, Any]] | None, add_generation_prompt: bool
    ) -> list[Segment]:
        """The conversation as text segments."""

    @abstractmethod
    def parse(self, text: str, tools: list[dict[str, Any]] | None = None) -> Message:
        """A finished reply (text without the stop marker) as an assistant message."""

    @abstractmethod
    def stream_parser(self, tools: list[dict[str, Any]] | None = None) -> StreamParser:
        """A parser for one reply as it is generated."""

    @property
    @abstractmethod
    def stop_strings(self) -> list[str]:
        """Texts that end a reply (checked on the decoded text)."""

    # -- shared -------------------------------------------------------------
    @property
    def call_format(self) -> str | None:
        """How replies write tool calls, for constrained decoding (chatforge.constrain):
        ``"tagged"`` (``<tool_call>`` blocks), ``"json"`` (JSON objects, bare or fenced), or
        None when calls are not JSON (ChatGLM3's code, ReAct's lines) and are left unconstrained."""
        return None

    @property
    def stop_token_ids(self) -> list[int]:
        ids = []
        for text in self.stop_strings:
            tid = self.tokenizer.convert_tokens_to_ids(text)
            if isinstance(tid, int) and tid != getattr(self.tokenizer, "unk_token_id", None):
                ids.append(tid)
        if self.tokenizer.eos_token_id is not None:
            ids.append(self.tokenizer.eos_token_id)
        return sorted(set(ids))

    def observation_message(
        self, content: str, name: str | None = None, call_id: str | None = None
    ) -> Message:
        """How a tool result goes back to the model."""
        return Message(Role.OBSERVATION, content, name=name, tool_call_id=call_id)

    def render(
        self,
        messages: Sequence[Message],
        tools: list[dict[str, Any]] | None = None,
        add_generation_prompt: bool = True,
        loss_mode: LossMode | str = LossMode.ASSISTANT,
    ) -> Rendered:
        """Token ids and loss mask for a conversation.

        The loss mask is True on what each trained message produces: by default the
        content and end-of-turn marker of every assistant message. A message's ``loss``
        field overrides that; ``loss_mode`` picks the last assistant turn only, or all.
        """
        messages = list(messages)
        check_conversation(messages)
        tools = _schemas(tools, messages)
        segments = self.segments(messages, tools, add_generation_prompt)
        trained = _trained_messages(messages, LossMode(loss_mode))
        ids: list[int] = []
        mask: list[bool] = []
        for seg in segments:
            if not seg.text:
                continue
            piece = seg.ids if seg.ids is not None else self.encode(seg.text, literal=seg.literal)
            on = loss_mode == LossMode.ALL or (
                seg.output and seg.message is not None and trained[seg.message]
            )
            ids.extend(piece)
            mask.extend([on] * len(piece))
        return Rendered(ids, mask, segments)

    def render_text(
        self,
        messages: Sequence[Message],
        tools: list[dict[str, Any]] | None = None,
        add_generation_prompt: bool = True,
    ) -> str:
        tools = _schemas(tools, list(messages))
        return "".join(s.text for s in self.segments(list(messages), tools, add_generation_prompt))

    def encode(self, text: str, literal: bool = False) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False, split_special_tokens=literal))


def _schemas(tools: list[dict[str, Any]] | None, messages: list[Message]) -> list[dict[str, Any]] | None:
    tools = tools or tools_of(messages)
    return [normalize_tool_schema(t) for t in tools] if tools else None


def _trained_messages(messages: list[Message], mode: LossMode) -> list[bool]:
    trained = [m.role is Role.ASSISTANT for m in messages]
    if mode is LossMode.LAST:
        last = max((i for i, m in enumerate(messages) if m.role is Role.ASSISTANT), default=None)
        trained = [i == last for i in range(len(messages))]
    return [m.loss if m.loss is not None else t for m, t in zip(messages, trained, strict=True)]


def check_conversation(messages: list[Message]) -> None:
    """Structural rules every template relies on, with messages that say what is wrong."""
    for i, m in enumerate(messages):
        if m.role is Role.SYSTEM and i > 0 and any(p.role is not Role.SYSTEM for p in messages[:i]):
            raise TemplateError(f"messages[{i}]: a system message must come before the conversation starts")
        if m.tool_calls and m.role is not Role.ASSISTANT:
            raise TemplateError(f"messages[{i}]: only assistant messages can carry tool calls")
