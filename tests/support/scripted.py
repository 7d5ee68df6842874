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


class PromptEngine(ScriptedEngine):
    """Replies with ``reply_for(prompt_text)``, any number of times: the reply depends on the
    conversation so far (its last user message, whether a tool result or code output came
    after it), not on the order of requests. ``delay`` seconds pass before each token (or
    ``delay(reply)`` seconds, when it is a function)."""

    def __init__(self, tokenizer, reply_for, delay=0.0) -> None:
        super().__init__(tokenizer, [])
        self.reply_for = reply_for
        self.delay = delay

    def generate_ids(self, prompt_ids, params, stats, state=None, cancel=None):
        import time

        self.prompts.append(list(prompt_ids))
        text = self.reply_for(self.tokenizer.decode(prompt_ids))
        stats.computed_tokens = len(prompt_ids)
        delay = self.delay(text) if callable(self.delay) else self.delay
        for token in self.tokenizer.encode(text, add_special_tokens=False):
            if delay:
                time.sleep(delay)
            if cancel is not None and cancel.is_set():
                return
            yield token
        yield self.tokenizer.eos_token_id


def prompt_model(tokenizer, reply_for, delay=0.0, template: str = "hf") -> ChatModel:
    return ChatModel(PromptEngine(tokenizer, reply_for, delay), get_template(template, tokenizer), name="scripted")
