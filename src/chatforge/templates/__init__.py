"""Templates: one interface that renders conversations to tokens and parses replies.

Families: the model's own Hugging Face chat template (``hf``), a built-in ChatML
template for tokenizers that carry none (``chatml``), the native ChatGLM3 format
(``chatglm3``) and ReAct prompting for models with no tool format (``react``).
"""

from __future__ import annotations

from chatforge.templates.base import (
    IGNORE_INDEX,
    LossMode,
    Rendered,
    Segment,
    StreamParser,
    Template,
    TemplateError,
)
from chatforge.templates.chatglm3 import REQUIRED_TOKENS, ChatGLM3Template
from chatforge.templates.hf import CHATML_TEMPLATE, HFTemplate
from chatforge.templates.react import ReActTemplate
from chatforge.tokenizer import Tokenizer

TEMPLATE_NAMES = ("auto", "hf", "chatml", "chatglm3", "react")

__all__ = [
    "IGNORE_INDEX",
    "TEMPLATE_NAMES",
    "ChatGLM3Template",
    "HFTemplate",
    "LossMode",
    "ReActTemplate",
    "Rendered",
    "Segment",
    "StreamParser",
    "Template",
    "TemplateError",
    "get_template",
]


def get_template(name: str, tokenizer: Tokenizer) -> Template:
    """The template called ``name`` for ``tokenizer``; ``auto`` picks from what the tokenizer carries."""
    if name not in TEMPLATE_NAMES:
        raise TemplateError(f"unknown template {name!r}; choose one of {', '.join(TEMPLATE_NAMES)}")
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if name == "auto":
        vocab = tokenizer.get_vocab()
        if all(t in vocab for t in REQUIRED_TOKENS):
            name = "chatglm3"
        elif has_template and "tools" in tokenizer.chat_template:
            name = "hf"
        else:
            return ReActTemplate(
                HFTemplate(tokenizer) if has_template else HFTemplate(tokenizer, CHATML_TEMPLATE)
            )
    if name == "chatglm3":
        return ChatGLM3Template(tokenizer)
    if name == "hf":
        return HFTemplate(tokenizer)
    if name == "chatml":
        return HFTemplate(tokenizer, CHATML_TEMPLATE)
    return ReActTemplate(HFTemplate(tokenizer) if has_template else HFTemplate(tokenizer, CHATML_TEMPLATE))
