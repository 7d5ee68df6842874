"""Shared fixtures: tiny in-process models for unit tests; the real embedded model for
tests marked ``integration``."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from tiny import make_model, make_tokenizer  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a test that tries to reach a hub fails at once


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return make_tokenizer()


@pytest.fixture(scope="session")
def tiny_model(tiny_tokenizer):
    return make_model(tiny_tokenizer)


@pytest.fixture()
def tiny_chat(tiny_model, tiny_tokenizer):
    from chatforge.chat import ChatModel
    from chatforge.engines.hf import TransformersEngine
    from chatforge.templates import get_template

    engine = TransformersEngine(tiny_model, tiny_tokenizer)
    return ChatModel(engine, get_template("hf", tiny_tokenizer), name="tiny", model=tiny_model)


@pytest.fixture(scope="session")
def default_model():
    """The real embedded default model (greedy tests only)."""
    from chatforge.chat import load_model
    from chatforge.models.embedded import EmbeddedModelError

    try:
        return load_model("default")
    except EmbeddedModelError as err:
        pytest.skip(f"embedded default model not installed: {err}")
