"""Shared fixtures: tiny in-process models for unit tests; the real embedded model for
tests marked ``integration``."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "support"))

from smollm import need_llama_cpp, smollm_gguf  # noqa: E402
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
def smollm_path() -> Path:
    return smollm_gguf()


@pytest.fixture(scope="session")
def smollm_tokenizer(smollm_path):
    from chatforge.engines.select import gguf_tokenizer

    return gguf_tokenizer(smollm_path)


@pytest.fixture(scope="session")
def smollm_engine(smollm_path, smollm_tokenizer):
    need_llama_cpp()
    from chatforge.engines.llamacpp import LlamaCppEngine

    # One thread: llama.cpp's threads spin-wait for each other, which collapses when other
    # processes (a parallel test run) take the cores.
    engine = LlamaCppEngine(smollm_path, smollm_tokenizer, context_length=1024, n_parallel=3, n_threads=1)
    yield engine
    engine.close()


@pytest.fixture(scope="session")
def smollm_fp32(smollm_path):
    """SmolLM2-135M loaded by transformers from its GGUF in float32, once for the session
    (about 25 s each time): tests that change it work on a ``copy.deepcopy``."""
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        smollm_path.parent, gguf_file=smollm_path.name, dtype=torch.float32, local_files_only=True
    ).eval()


@pytest.fixture(scope="session")
def default_model():
    """The real embedded default model (greedy tests only)."""
    from chatforge.chat import load_model
    from chatforge.models.embedded import EmbeddedModelError

    try:
        return load_model("default")
    except EmbeddedModelError as err:
        pytest.skip(f"embedded default model not installed: {err}")
