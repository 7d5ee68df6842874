"""The real embedded default model, greedy decoding. Marked ``integration``: run by
``make test``; skip with ``-m 'not integration'`` for a fast loop."""

import pytest

from chatforge.engines.amx import on_llama_thread

pytestmark = pytest.mark.integration

GREEDY = dict(do_sample=False, max_new_tokens=48)
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city_name": {"type": "string", "description": "The name of the city"}},
            "required": ["city_name"],
        },
    },
}


def has_chinese(text: str) -> bool:
    return any("\u4e00" <= ch <= "\u9fff" for ch in text)


def test_chinese_question_gets_a_chinese_answer(default_model):
    response, history = default_model.chat("你好，请介绍一下你自己", history=[], **GREEDY)
    assert has_chinese(response), response
    assert history[-1] == {"role": "assistant", "content": response, "metadata": ""}


def test_two_turn_memory_and_kv_reuse(default_model):
    session = default_model.session()
    session.send("我叫小明", **GREEDY)
    first = session.last_stats
    turn1_ids = default_model.template.render(session.messages[:1]).ids
    reply = session.send("我叫什么名字？", **GREEDY)
    second = session.last_stats
    assert "小明" in reply.content, reply.content
    turn2_ids = default_model.template.render(session.messages[:3]).ids
    # Turn 2 reuses turn 1's prompt and reply (all but the last sampled token) and
    # computes only what was added since.
    # (Turn 1 may take the template's system prompt from another sequence's cache.)
    assert first.reused_tokens < len(turn1_ids) - 3
    assert first.computed_tokens == len(turn1_ids) - first.reused_tokens
    assert second.reused_tokens == len(turn1_ids) + first.completion_tokens - 1
    assert second.computed_tokens == len(turn2_ids) - second.reused_tokens


def test_weather_question_becomes_a_tool_call_dict(default_model):
    history = [{"role": "system", "content": "You are a helpful assistant.", "tools": [WEATHER_TOOL]}]
    response, history = default_model.chat(
        "What's the weather like in Beijing today?", history=history, **GREEDY
    )
    assert isinstance(response, dict), response
    assert response["name"] == "get_weather"
    assert "beijing" in response["parameters"]["city_name"].lower()
    assert history[-1]["metadata"] == "get_weather"


def test_default_engine_prefills_long_prompts_in_bf16_and_agrees_with_llama_cpp(default_model):
    """On CPUs with bf16 matrix units the default is the hybrid engine: a long prompt's cache
    comes from transformers, the decode from llama.cpp, with llama.cpp's own answer."""
    from chatforge.engines.base import SamplingParams
    from chatforge.messages import Message
    from chatforge.models.device import cpu_has_bf16

    engine = default_model.engine
    if not cpu_has_bf16():
        pytest.skip("no bf16 matrix units: the default engine is llama.cpp here")
    assert engine.name == "hybrid" and engine.describe()["rotary"] == "halves", engine.describe()
    notes = "长城是中国古代的军事防御工程。The Great Wall is about 21,000 km long. " * 6
    ids = default_model.template.render([Message("user", notes + "\n长城大约有多长？请用一句话回答。")]).ids
    # Seeded and stateless: each run computes the whole prompt (no prefix cache).
    params = SamplingParams(do_sample=False, max_new_tokens=24, seed=0)
    before = engine.prefilled_tokens
    hybrid = [t for c in engine.stream(ids, params) for t in c.token_ids]
    assert engine.prefilled_tokens - before == len(ids)
    saved, engine.min_prefill = engine.min_prefill, 10**9
    try:
        own = [t for c in engine.stream(ids, params) for t in c.token_ids]
    finally:
        engine.min_prefill = saved
    text = default_model.tokenizer.decode(hybrid)
    assert "21" in text, text
    assert hybrid[:4] == own[:4], (text, default_model.tokenizer.decode(own))


def test_default_model_exports_to_gguf_that_llama_cpp_answers_with(default_model, tmp_path):
    """The Qwen2 layout (rotate-half Q/K rows): its bf16 weights written back as GGUF Q8_0 with
    the embedded GGUF as template; llama.cpp's greedy answer starts as transformers' does."""
    import llama_cpp
    import torch
    from transformers import AutoModelForCausalLM

    from chatforge.models.embedded import DEFAULT, assemble_gguf, ensure_hf_dir
    from chatforge.models.gguf.export import write_gguf

    model = AutoModelForCausalLM.from_pretrained(ensure_hf_dir(DEFAULT), dtype=torch.bfloat16)
    out = write_gguf(model, assemble_gguf(DEFAULT), tmp_path / "default-q8_0.gguf", "q8_0", progress=False)
    ids = default_model.tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France? Answer in one word."}],
        add_generation_prompt=True,
        tokenize=True,
        return_dict=False,
    )
    with torch.no_grad():
        expected = model.generate(torch.tensor([ids]), max_new_tokens=4, do_sample=False)[0, len(ids) :].tolist()
    @on_llama_thread  # llama.cpp's AMX tiles and PyTorch never share a thread (engines/amx.py)
    def answer() -> list[int]:
        llm = llama_cpp.Llama(str(out), n_ctx=512, verbose=False)
        got = []
        for token in llm.generate(ids, temp=0.0, top_k=1):
            got.append(token)
            if len(got) == 4:
                break
        llm.close()
        return got

    got = answer()
    assert "Paris" in default_model.tokenizer.decode(got)
    n = min(3, len(expected))  # generate stops at the end-of-turn token
    assert got[:n] == expected[:n]
