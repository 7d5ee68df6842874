"""A tiny random model whose tokenizer has Qwen's ``<tool_call>`` tags as special tokens:
whatever a random model would write, a constrained reply must be valid."""

from __future__ import annotations

import pytest
from constrained_tools import TAGS
from tiny import CHATML_SPECIALS, make_model, make_tokenizer


@pytest.fixture(scope="session")
def tagged_tokenizer():
    return make_tokenizer(specials=[CHATML_SPECIALS[0], *TAGS, *CHATML_SPECIALS[1:]])


@pytest.fixture(scope="session")
def tagged_model(tagged_tokenizer):
    return make_model(tagged_tokenizer, seed=3)


@pytest.fixture()
def tagged_chat(tagged_model, tagged_tokenizer):
    from chatforge.chat import ChatModel
    from chatforge.engines.hf import TransformersEngine
    from chatforge.templates import get_template

    engine = TransformersEngine(tagged_model, tagged_tokenizer)
    yield ChatModel(engine, get_template("hf", tagged_tokenizer), name="tiny-tagged", model=tagged_model)
    engine.close()
