"""Speculative decoding on the real embedded default model (greedy, llama.cpp): replies as
plain decoding gives them (but for a near-tie, tests/support/ties.py) for English code, Chinese,
a constrained tool call and a stop string, with the drafts really taken. Marked ``integration``."""

from __future__ import annotations

import pytest
from ties import assert_same_but_for_a_near_tie

from chatforge.engines.base import SamplingParams
from chatforge.messages import Message, Role

pytestmark = pytest.mark.integration

CODE = '''def mean(values):
    total = 0
    for value in values:
        total += value
    return total / len(values)


def spread(values):
    middle = mean(values)
    return max(values) - middle, middle - min(values)
'''
ADD = {
    "type": "function",
    "function": {
        "name": "add",
        "description": "Add two integers",
        "parameters": {
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
            "required": ["a", "b"],
        },
    },
}
CASES = {
    "code edit": ("Rename `mean` to `average` and return the whole code.\n```python\n" + CODE + "```", None, {}),
    "chinese": ("请把这句话重复两遍：春眠不觉晓，处处闻啼鸟。", None, {}),
    "tool call": ("Add 1234 and 4321 with the add tool.", [ADD], {}),
    "stop string": ("Copy this code exactly:\n```python\n" + CODE + "```", None, {"stop": ["middle ="]}),
}


@pytest.fixture(scope="module")
def models():
    from chatforge.chat import load_model
    from chatforge.models.embedded import EmbeddedModelError

    try:
        made = {
            mode: load_model(
                "default", engine="llama.cpp", context_length=2048,
                engine_options={"speculative": mode, "n_parallel": 1},
            )
            for mode in ("off", "ngram")
        }
    except EmbeddedModelError as err:
        pytest.skip(f"embedded default model not installed: {err}")
    yield made
    for model in made.values():
        model.engine.close()


@pytest.mark.parametrize("case", list(CASES))
def test_greedy_replies_are_plain_decodings(models, case):
    question, tools, extra = CASES[case]
    messages = [Message(Role.USER, question)]
    replies = {}
    template = models["off"].template
    prompt = template.render(messages, tools, add_generation_prompt=True).ids
    for mode, model in models.items():
        params = SamplingParams(
            do_sample=False,
            max_new_tokens=160,
            stop_token_ids=list(template.stop_token_ids),
            grammar=model.grammar_for(tools) if tools else None,  # the call constrained, as served
            **extra,
        )
        chunks = list(model.engine.stream(prompt, params))
        replies[mode] = ([t for c in chunks for t in c.token_ids], chunks[-1].stats, "".join(c.text for c in chunks))
    (plain, _, _), (fast, stats, text) = replies["off"], replies["ngram"]
    assert_same_but_for_a_near_tie(models["off"].engine.model_path, prompt, plain, fast)
    assert stats.drafted_tokens > 0
    if case in ("code edit", "stop string", "chinese"):  # replies that repeat the prompt
        assert stats.accepted_tokens >= min(10, len(fast) // 2), stats
    if case == "stop string":
        assert "middle =" not in text and "def spread" in text and stats.finish_reason == "stop"
    if case == "tool call":
        message, _ = models["ngram"].reply(messages, tools, do_sample=False, max_new_tokens=160)
        (call,) = message.tool_calls
        assert call.name == "add" and call.arguments == {"a": 1234, "b": 4321}
