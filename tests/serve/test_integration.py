"""The real embedded default model behind the server, through the openai client."""

from __future__ import annotations

import pytest
from serve_support import KEY, start, stop, wait_ready


@pytest.mark.integration
def test_default_model_chat_completion(tmp_path):
    from chatforge.models.embedded import EmbeddedModelError, ensure_hf_dir

    try:
        ensure_hf_dir()
    except (EmbeddedModelError, TypeError) as err:
        pytest.skip(f"embedded default model not installed: {err}")
    import openai

    proc, url = start("default", tmp_path / "server.log", "--dtype", "bfloat16")
    try:
        wait_ready(proc, url, tmp_path / "server.log", timeout=300)
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0)
        out = client.chat.completions.create(
            model="default", messages=[{"role": "user", "content": "What is 2+3? Answer with a number."}],
            max_tokens=16, temperature=0,
        )
        assert "5" in out.choices[0].message.content
        # A client resending the history (as Open WebUI and LangChain do) computes only the
        # new turn: the engine keeps the last call's cache as a shared prefix.
        history = [
            {"role": "user", "content": "What is 2+3? Answer with a number."},
            {"role": "assistant", "content": out.choices[0].message.content},
            {"role": "user", "content": "And 4+4?"},
        ]
        again = client.chat.completions.create(model="default", messages=history, max_tokens=8, temperature=0)
        cached = again.usage.prompt_tokens_details.cached_tokens
        assert out.usage.prompt_tokens - 1 <= cached < again.usage.prompt_tokens
        assert "8" in again.choices[0].message.content
    finally:
        stop(proc)
