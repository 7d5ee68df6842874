"""The chat API: a model, its template and its engine, with the signatures ChatGLM3 users know.

``ChatModel.chat`` / ``stream_chat`` take and return history as ``{role, content}``
dicts and accept ``past_key_values`` / ``return_past_key_values`` to carry the KV cache
across turns. ``ChatSession`` does that bookkeeping for you. ``ChatModel.generate`` is
the message-level call the agent loop and the server build on.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chatforge.constrain.grammars import (
    TAG_CLOSE,
    TAG_OPEN,
    GrammarError,
    check_grammar,
    check_tools,
    json_grammar,
    tag,
    text_grammar,
    tool_grammar,
)
from chatforge.engines.base import Engine, GenerationStats, KVState, SamplingParams
from chatforge.messages import INTERPRETER, Message, Role, from_history, to_history, tools_of
from chatforge.templates import Template, get_template

log = logging.getLogger(__name__)

AUTO = "auto"
"""``generate(grammar=AUTO)``: constrain tool calls to the offered tools' schemas when the
model and engine can (the default); a grammar string, or None for no constraint."""


@dataclass
class ReplyEvent:
    """One step of a streamed reply: visible ``delta`` text; ``message`` and ``stats`` at the end."""

    delta: str = ""
    message: Message | None = None
    stats: GenerationStats | None = None

    @property
    def done(self) -> bool:
        return self.message is not None


def sampling_params(
    template: Template,
    max_new_tokens: int | None = None,
    max_length: int | None = None,
    prompt_tokens: int = 0,
    stop: list[str] | str | None = None,
    **kwargs: Any,
) -> SamplingParams:
    """Sampling parameters with the template's stop markers added."""
    if max_new_tokens is None:
        max_new_tokens = max(1, max_length - prompt_tokens) if max_length else 512
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    known = {k: v for k, v in kwargs.items() if k in SamplingParams.__dataclass_fields__ and v is not None}
    unknown = set(kwargs) - set(SamplingParams.__dataclass_fields__) - {"num_beams", "logits_processor"}
    if unknown:
        raise TypeError(f"unknown generation argument(s): {', '.join(sorted(unknown))}")
    return SamplingParams(
        max_new_tokens=max_new_tokens,
        stop=[*template.stop_strings, *stops],
        stop_token_ids=template.stop_token_ids,
        **known,
    )


class ChatModel:
    """A chat model ready to talk: ``chat``, ``stream_chat``, ``session`` and ``generate``."""

    def __init__(
        self,
        engine: Engine,
        template: Template,
        name: str = "model",
        model: Any = None,
        constrain: bool = True,
    ) -> None:
        self.engine = engine
        self.template = template
        self.name = name
        self.model = model  # the underlying torch module, when there is one
        self.constrain = constrain  # schema-constrained decoding of tool calls and JSON replies

    # -- constrained decoding ---------------------------------------------------
    @property
    def can_constrain(self) -> bool:
        """Whether replies can be constrained here: on, a local engine, a fast tokenizer."""
        from chatforge.constrain.matcher import supports

        return self.constrain and self.engine.supports_grammar and supports(self.tokenizer)

    def grammar_for(
        self,
        tools: list[dict[str, Any]] | None = None,
        *,
        force: str | None = None,
        parallel: bool = True,
        json_mode: bool = False,
        json_schema: dict[str, Any] | None = None,
    ) -> str | None:
        """The grammar a reply must follow: valid calls of ``tools`` (``force``: a call of
        that tool, or ``"*"`` of any, is required), or with ``json_mode`` one JSON object
        (following ``json_schema``; with tools, only the calls are constrained). None when
        nothing is to be constrained or it cannot be: constraints off, a remote engine, a
        template whose calls are not JSON. Raises
        :class:`GrammarError` naming the tool or schema the grammar engine cannot compile."""
        if not self.can_constrain:
            return None
        from chatforge.constrain.matcher import grammar_tokenizer

        view = grammar_tokenizer(self.tokenizer, self.template.stop_token_ids)
        if tools:
            if self.template.call_format is None:
                return None
            check_tools(tools)
            grammar = tool_grammar(tools, tags=self._tags(view), force=force, parallel=parallel)
        elif json_mode:
            grammar = json_grammar(json_schema)
        else:
            return None
        check_grammar(grammar, view)
        return grammar

    def _tags(self, view: Any) -> tuple[str, str] | None:
        """The template's tool-call tags in a grammar: special tokens where they are one."""
        if self.template.call_format != "tagged":
            return None

        def special(text: str) -> bool:
            ids = self.tokenizer.encode(text, add_special_tokens=False)
            return len(ids) == 1 and view.is_special_token(ids[0])

        return (tag(TAG_OPEN, special(TAG_OPEN)), tag(TAG_CLOSE, special(TAG_CLOSE)))

    def _text_grammar(self) -> str:
        from chatforge.constrain.matcher import grammar_tokenizer

        return text_grammar(self._tags(grammar_tokenizer(self.tokenizer, self.template.stop_token_ids)))

    def prepare_constraints(self) -> None:
        """Build what constrained decoding needs ahead of the first constrained reply."""
        if self.can_constrain:
            from chatforge.constrain.matcher import grammar_tokenizer

            grammar_tokenizer(self.tokenizer, self.template.stop_token_ids)

    def _auto_grammar(self, tools: list[dict[str, Any]] | None) -> str | None:
        if not tools:
            return None
        try:
            return self.grammar_for(tools)
        except GrammarError as err:
            log.warning("tool calls are not constrained for this reply: %s", err)
            return None

    @property
    def tokenizer(self) -> Any:
        return self.engine.tokenizer

    # -- message level ----------------------------------------------------------
    def generate(
        self,
        messages: list[Message],
        tools: list[dict[str, Any]] | None = None,
        *,
        state: KVState | None = None,
        cancel: threading.Event | None = None,
        **params: Any,
    ) -> Iterator[ReplyEvent]:
        """Stream the assistant's reply to ``messages``; the last event holds the parsed message.

        ``grammar``: :data:`AUTO` (calls constrained to the tools' schemas where possible), a
        grammar from :meth:`grammar_for`, or None. Under :data:`AUTO`, a reply that began
        calling a tool the model made up (its name had little probability among the offered
        ones, so the grammar bent it into one of them) is answered again as text: the model
        meant a tool that is not there, and a wrong call would act on it."""
        tools = tools or tools_of(messages)
        grammar = params.pop("grammar", AUTO)
        auto = grammar == AUTO
        if auto:
            grammar = self._auto_grammar(tools)
        prompt = self.template.render(messages, tools, add_generation_prompt=True).ids
        sp = params.pop("sampling", None) or sampling_params(
            self.template, prompt_tokens=len(prompt), grammar=grammar, **params
        )
        shown = False
        for event in self._reply_events(prompt, sp, tools, state, cancel):
            if event.message is None:
                shown = shown or bool(event.delta)
            elif auto and grammar and event.stats is not None and event.stats.unknown_tool and not shown:
                if event.message.tool_calls and not (cancel is not None and cancel.is_set()):
                    log.info("the reply called a tool that is not offered; it is answered in text instead")
                    text_only = dataclasses.replace(sp, grammar=self._text_grammar())
                    spent = event.stats.completion_tokens
                    for again in self._reply_events(prompt, text_only, tools, state, cancel):
                        if again.stats is not None:
                            again.stats.completion_tokens += spent
                        yield again
                    return
            yield event

    def _reply_events(
        self,
        prompt: list[int],
        sp: SamplingParams,
        tools: list[dict[str, Any]] | None,
        state: KVState | None,
        cancel: threading.Event | None,
    ) -> Iterator[ReplyEvent]:
        parser = self.template.stream_parser(tools)
        stats = None
        ids: list[int] = []
        for chunk in self.engine.stream(prompt, sp, state=state, cancel=cancel):
            ids += chunk.token_ids
            if chunk.text:
                delta = parser.feed(chunk.text)
                if delta:
                    yield ReplyEvent(delta=delta)
            if chunk.stats is not None:
                stats = chunk.stats
        rest, message = parser.finish()
        if (
            not message.tool_calls
            and message.content == parser.text
            and self.tokenizer.decode(ids, skip_special_tokens=False) == message.content
        ):
            message.token_ids = ids
        yield ReplyEvent(delta=rest, message=message, stats=stats)

    def reply(
        self, messages: list[Message], tools: list[dict[str, Any]] | None = None, **params: Any
    ) -> tuple[Message, GenerationStats]:
        event = _last(self.generate(messages, tools, **params))
        assert event.message is not None and event.stats is not None
        return event.message, event.stats

    # -- ChatGLM3-style API -----------------------------------------------------
    def stream_chat(
        self,
        query: str,
        history: list[dict[str, Any]] | None = None,
        role: str = "user",
        past_key_values: KVState | None = None,
        return_past_key_values: bool = False,
        **params: Any,
    ) -> Iterator[tuple[Any, ...]]:
        """Yield ``(response, history)`` (plus the KV state when asked) as the reply grows.

        ``response`` is text, or for a tool call ``{"name", "parameters"}``, or for code
        ``{"name": "interpreter", "content": code}``. ``history`` is a new list.
        """
        messages = from_history(history)
        messages.append(Message(Role.parse(role), query))
        state = (
            past_key_values
            if past_key_values is not None
            else (self.engine.new_state() if return_past_key_values else None)
        )
        text = ""
        for event in self.generate(messages, state=state, **params):
            text += event.delta
            if event.message is None:
                out: tuple[Any, ...] = (text, to_history([*messages, Message(Role.ASSISTANT, text)]))
            else:
                out = (_response(event.message), to_history([*messages, event.message]))
            yield (*out, state) if return_past_key_values else out

    def chat(
        self,
        query: str,
        history: list[dict[str, Any]] | None = None,
        role: str = "user",
        past_key_values: KVState | None = None,
        return_past_key_values: bool = False,
        **params: Any,
    ) -> tuple[Any, ...]:
        """``(response, history)`` for one turn (plus the KV state when asked)."""
        return _last(
            self.stream_chat(query, history, role, past_key_values, return_past_key_values, **params)
        )

    def session(self, system: str | None = None, tools: list[dict[str, Any]] | None = None) -> ChatSession:
        return ChatSession(self, system=system, tools=tools)


def _last(items: Iterator[Any]) -> Any:
    """The last item of a stream, after running it to the end."""
    return deque(items, maxlen=1).pop()


def _response(message: Message) -> Any:
    if message.tool_calls:
        call = message.tool_calls[0]
        return {"name": call.name, "parameters": call.arguments}
    if message.metadata == INTERPRETER:
        return {"name": INTERPRETER, "content": message.content}
    return message.content


@dataclass
class ChatSession:
    """A conversation that keeps its history and its KV cache, so turn N computes only new tokens."""

    model: ChatModel
    system: str | None = None
    tools: list[dict[str, Any]] | None = None
    messages: list[Message] = field(default_factory=list)
    last_stats: GenerationStats | None = None

    def __post_init__(self) -> None:
        self.state = self.model.engine.new_state()
        if self.system is not None or self.tools:
            self.messages.insert(0, Message(Role.SYSTEM, self.system or "", tools=self.tools))

    def stream(self, content: str, role: str = "user", **params: Any) -> Iterator[ReplyEvent]:
        self.messages.append(Message(Role.parse(role), content))
        for event in self.model.generate(self.messages, self.tools, state=self.state, **params):
            if event.message is not None:
                self.messages.append(event.message)
                self.last_stats = event.stats
            yield event

    def send(self, content: str, role: str = "user", **params: Any) -> Message:
        event = _last(self.stream(content, role, **params))
        assert event.message is not None
        return event.message

    def set_system(self, text: str) -> None:
        if self.messages and self.messages[0].role is Role.SYSTEM:
            self.messages[0].content = text
        else:
            self.messages.insert(0, Message(Role.SYSTEM, text, tools=self.tools))
        self.system = text

    def clear(self) -> None:
        keep = self.messages[:1] if self.messages and self.messages[0].role is Role.SYSTEM else []
        self.messages = keep
        self.state.reset()

    @property
    def history(self) -> list[dict[str, Any]]:
        return to_history(self.messages)


def load_model(
    ref: str | Path = "default",
    *,
    device: str | None = "auto",
    dtype: str | None = "auto",
    template: str = "auto",
    adapter: str | Path | None = None,
    context_length: int | None = None,
    engine: str = "auto",
    remote_url: str | None = None,
    remote_model: str | None = None,
    remote_api_key: str | None = None,
    quantize: str | None = None,
    device_map: str | dict[str, Any] | None = None,
    engine_options: dict[str, Any] | None = None,
    constrain: bool = True,
) -> ChatModel:
    """Load a chat model: ``"default"`` (embedded), a local Hugging Face directory, a ``.gguf``
    file or a ChatGLM checkpoint directory; optionally with a PEFT adapter.

    ``engine`` is ``auto`` (chosen per model and hardware, see ``chatforge.engines.select``),
    ``transformers``, ``llama.cpp`` (GGUF files), ``hybrid`` (llama.cpp decoding a GGUF file,
    transformers prefilling in bf16) or ``remote`` (an OpenAI-compatible
    ``remote_url``; ``ref`` then only supplies the tokenizer). ``quantize`` int8/int4
    (bitsandbytes, CUDA only) and ``device_map`` apply to transformers, ``quantize``
    q4_0/iq4_nl/q8_0 re-quantize a GGUF for the llama.cpp engines; ``engine_options``
    go to the engine's constructor (e.g. ``n_parallel``, ``n_threads`` and ``speculative``:
    ``"off"``, ``"ngram"`` (the default) or ``"draft:MODEL"`` for llama.cpp and hybrid,
    ``prefill_model`` for hybrid). ``constrain``: tool calls and JSON replies constrained to
    their schemas on the local engines (``chatforge.constrain``)."""
    # Engines and loaders bring PyTorch, transformers or llama.cpp with them: imported when a
    # model is loaded, so that `import chatforge` and `chatforge --help` stay quick.
    from chatforge.engines.hf import TransformersEngine
    from chatforge.engines.select import build_engine, choose_engine, load_quantized_weights
    from chatforge.models.loader import attach_adapter, load_weights, prepare_adapter, resolve

    chosen = choose_engine(
        ref,
        engine,
        device=device,
        adapter=adapter,
        quantize=quantize,
        device_map=device_map,
        remote_url=remote_url,
        prefill_model=(engine_options or {}).get("prefill_model"),
    )
    if chosen != "transformers":
        built = build_engine(
            ref,
            chosen,
            adapter=adapter,
            context_length=context_length,
            remote_url=remote_url,
            remote_model=remote_model,
            remote_api_key=remote_api_key,
            options=engine_options,
            quantize=quantize if chosen in ("llama.cpp", "hybrid") else None,
        )
        return ChatModel(
            built.engine, get_template(template, built.tokenizer), name=built.name, constrain=constrain
        )
    source = resolve(ref)
    if quantize or device_map is not None:
        model, tokenizer = load_quantized_weights(
            source, quantize=quantize, device=device, dtype=dtype, device_map=device_map
        )
    else:
        model, tokenizer = load_weights(source, device=device, dtype=dtype)
    if adapter is not None:
        model = attach_adapter(model, prepare_adapter(adapter, source))
    options = {k: v for k, v in (engine_options or {}).items() if k not in ("prefill_model", "speculative")}
    if str((engine_options or {}).get("speculative") or "off") not in ("off", "ngram"):
        log.warning("speculative decoding with a draft model is for the llama.cpp engines; not used here")
    engine_ = TransformersEngine(model, tokenizer, context_length=context_length, **options)
    return ChatModel(
        engine_, get_template(template, tokenizer), name=source.name, model=model, constrain=constrain
    )
