"""A scripted engine: a test double that replays fixed replies, to pin the agent loop's
control flow without depending on what a random model writes."""

from __future__ import annotations

from collections.abc import Iterator

from chatforge.chat import ChatModel
from chatforge.engines.base import Engine, GenerationStats, KVState, SamplingParams
from chatforge.templates import get_template


class ScriptedEngine(Engine):
    name = "scripted"

    def __init__(self, tokenizer, replies: list[str]) -> None:
        super().__init__(tokenizer, context_length=100_000)
        self.replies = list(replies)
        self.prompts: list[list[int]] = []

    def generate_ids(
        self,
        prompt_ids: list[int],
        params: SamplingParams,
        stats: GenerationStats,
        state: KVState | None = None,
        cancel=None,
    ) -> Iterator[int]:
        self.prompts.append(list(prompt_ids))
        if not self.replies:
            raise AssertionError("the scripted engine ran out of replies")
        text = self.replies.pop(0)
        stats.computed_tokens = len(prompt_ids)
        yield from self.tokenizer.encode(text, add_special_tokens=False)
        yield self.tokenizer.eos_token_id


def scripted_model(tokenizer, replies: list[str], template: str = "hf") -> ChatModel:
    engine = ScriptedEngine(tokenizer, replies)
    return ChatModel(engine, get_template(template, tokenizer), name="scripted")
