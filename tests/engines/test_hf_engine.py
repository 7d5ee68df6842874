import threading

import pytest
import torch

from chatforge.engines.base import (
    GenerationStats,
    IncrementalDecoder,
    PromptTooLongError,
    SamplingParams,
    StopMatcher,
)
from chatforge.engines.hf import TransformersEngine

GREEDY = dict(do_sample=False, max_new_tokens=12)


def prompt_ids(tokenizer, text="Hello, how are you?"):
    return tokenizer.encode(text, add_special_tokens=False)


def generated(engine, ids, params, state=None, cancel=None):
    chunks = list(engine.stream(ids, params, state=state, cancel=cancel))
    return [t for c in chunks for t in c.token_ids], chunks[-1].stats


def test_greedy_matches_transformers_generate(tiny_model, tiny_tokenizer):
    engine = TransformersEngine(tiny_model, tiny_tokenizer)
    ids = prompt_ids(tiny_tokenizer)
    tokens = []
    stats = GenerationStats()
    for t in engine.generate_ids(ids, SamplingParams(**GREEDY), stats):
        tokens.append(t)
        if len(tokens) == 12:
            break
    with torch.no_grad():
        ref = tiny_model.generate(
            torch.tensor([ids]), max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=0
        )
    assert tokens == ref[0, len(ids) :].tolist()


def test_kv_state_reuses_the_common_prefix(tiny_model, tiny_tokenizer):
    engine = TransformersEngine(tiny_model, tiny_tokenizer)
    state = engine.new_state()
    first = prompt_ids(tiny_tokenizer)
    out1, stats1 = generated(engine, first, SamplingParams(**GREEDY), state)
    assert (stats1.reused_tokens, stats1.computed_tokens) == (0, len(first))
    # The next prompt extends the first turn (prompt + reply) by new tokens.
    follow = first + out1 + prompt_ids(tiny_tokenizer, " And the weather?")
    out2, stats2 = generated(engine, follow, SamplingParams(**GREEDY), state)
    # Everything computed in turn 1 is reused: the prompt and every generated token but
    # the last, whose KV is never computed because generation stops after sampling it.
    assert stats2.reused_tokens == len(first) + len(out1) - 1
    assert stats2.computed_tokens == len(follow) - stats2.reused_tokens
    # And reuse does not change the result.
    fresh, _ = generated(engine, follow, SamplingParams(**GREEDY))
    assert out2 == fresh


def test_a_diverging_prompt_crops_the_cache(tiny_model, tiny_tokenizer):
    engine = TransformersEngine(tiny_model, tiny_tokenizer)
    state = engine.new_state()
    generated(engine, prompt_ids(tiny_tokenizer, "Hello, how are you? fine"), SamplingParams(**GREEDY), state)
    other = prompt_ids(tiny_tokenizer, "Hello, what is the weather")
    out, stats = generated(engine, other, SamplingParams(**GREEDY), state)
    common = 0
    for a, b in zip(prompt_ids(tiny_tokenizer, "Hello, how are you? fine"), other):
        if a != b:
            break
        common += 1
    assert stats.reused_tokens == common
    assert out == generated(engine, other, SamplingParams(**GREEDY))[0]


def test_seeded_sampling_is_reproducible(tiny_model, tiny_tokenizer):
    engine = TransformersEngine(tiny_model, tiny_tokenizer)
    params = dict(do_sample=True, temperature=1.5, top_p=0.95, top_k=50, max_new_tokens=10, seed=7)
    a, _ = generated(engine, prompt_ids(tiny_tokenizer), SamplingParams(**params))
    b, _ = generated(engine, prompt_ids(tiny_tokenizer), SamplingParams(**params))
    assert a == b and len(a) == 10


def test_cancel_stops_generation(tiny_model, tiny_tokenizer):
    engine = TransformersEngine(tiny_model, tiny_tokenizer)
    cancel = threading.Event()
    stream = engine.stream(
        prompt_ids(tiny_tokenizer), SamplingParams(do_sample=False, max_new_tokens=200), cancel=cancel
    )
    count = 0
    for chunk in stream:
        count += 1
        if count == 3:
            cancel.set()
        if chunk.stats:
            assert chunk.finish_reason == "cancelled"
            assert chunk.stats.completion_tokens <= 4
    # The engine is free again at once.
    assert engine._lock.acquire(timeout=1)
    engine._lock.release()


def test_prompt_longer_than_context_names_both_numbers(tiny_model, tiny_tokenizer):
    engine = TransformersEngine(tiny_model, tiny_tokenizer, context_length=8)
    with pytest.raises(PromptTooLongError, match="has 10 tokens but the model's context window is 8"):
        list(engine.stream(list(range(5, 15)), SamplingParams(**GREEDY)))


def test_nan_logits_are_caught(tiny_tokenizer):
    from tiny import make_model

    model = make_model(tiny_tokenizer, seed=1)
    with torch.no_grad():
        model.lm_head.weight.fill_(float("nan"))
    engine = TransformersEngine(model, tiny_tokenizer)
    with pytest.raises(RuntimeError, match="NaN/inf"):
        list(engine.stream(prompt_ids(tiny_tokenizer), SamplingParams(**GREEDY)))


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("temperature", -1, "temperature must be in"),
        ("top_p", 0, "top_p must be in"),
        ("top_p", float("nan"), "top_p must be a number"),
        ("max_new_tokens", 0, "max_new_tokens must be a positive integer"),
        ("repetition_penalty", 0, "repetition_penalty must be in"),
        ("top_k", -3, "top_k must be a non-negative integer"),
    ],
)
def test_sampling_params_are_validated(field, value, message):
    with pytest.raises(ValueError, match=message):
        SamplingParams(**{field: value})


def test_stop_matcher_holds_partial_stops_and_cuts_at_the_first():
    m = StopMatcher(["<|im_end|>", "Observation:"])
    assert m.push("Hello <|im") == ("Hello ", False)
    assert m.push("_e") == ("", False)
    assert m.push("nd|> tail") == ("", True)
    m = StopMatcher(["STOP"])
    assert m.push("abc ST") == ("abc ", False)
    assert m.push("ART") == ("START", False)


def test_incremental_decoder_never_splits_characters(tiny_tokenizer):
    ids = tiny_tokenizer.encode("你好，世界 hello", add_special_tokens=False)
    decoder = IncrementalDecoder(tiny_tokenizer)
    pieces = [decoder.push(i) for i in ids] + [decoder.flush()]
    assert "".join(pieces) == "你好，世界 hello"
    assert all("\ufffd" not in p for p in pieces)


def test_a_vanishing_top_p_still_keeps_the_best_token():
    import torch

    from chatforge.engines.sampling import sample

    logits = torch.tensor([[1.0, 3.0, 2.0]])
    params = SamplingParams(do_sample=True, temperature=1.0, top_p=5e-324)
    assert [int(sample(logits, params)) for _ in range(5)] == [1] * 5


def test_extreme_penalty_and_temperature_do_not_overflow_sampling():
    # Found by the API fuzzer: repetition_penalty 5e-324 made a logit +inf, then NaN probabilities.
    import torch

    from chatforge.engines.sampling import apply_penalties, sample

    params = SamplingParams(do_sample=True, temperature=1e-3, top_p=0.9, repetition_penalty=5e-324)
    logits = apply_penalties(torch.tensor([[1.0, 3.0, 2.0]]), torch.tensor([[0]]), None, params)
    assert int(sample(logits, params)) == 0
