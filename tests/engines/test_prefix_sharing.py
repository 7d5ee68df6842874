"""Prompts that start alike share the cached prefix across llama.cpp sequences: a new
conversation with the same system prompt (or tool list) as another takes those tokens' keys
and values instead of computing them, requests arriving together wait for the first one's
prompt, and the answers stay exactly those of a full computation. On SmolLM2-135M's GGUF."""

from __future__ import annotations

import threading

import pytest

from chatforge.engines.base import SamplingParams
from chatforge.engines.kvstate import StateFormatError
from chatforge.engines.llamacpp import MIN_SHARED_PREFIX

SYSTEM = (
    "You are a careful assistant for a small bakery. Answer in one short sentence, "
    "mention the bakery's name, Crumb & Co., and never invent prices."
)
QUESTIONS = ("When do you open?", "Do you sell rye bread?", "Can I order a cake?")
PARAMS = SamplingParams(do_sample=False, max_new_tokens=8)


def prompt(tokenizer, question):
    return tokenizer.apply_chat_template(
        [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}],
        add_generation_prompt=True,
        tokenize=True,
        return_dict=False,
    )


def run(engine, ids, state=None):
    chunks = list(engine.stream(ids, PARAMS, state=state))
    return [t for c in chunks for t in c.token_ids], chunks[-1].stats


def forget(engine):
    """Every sequence empty and unowned, as after a restart."""
    for sequence in engine._sequences:
        engine._clear(sequence)


@pytest.fixture
def engine(smollm_engine):
    forget(smollm_engine)
    smollm_engine.share_prefixes = True
    yield smollm_engine
    smollm_engine.share_prefixes = True
    forget(smollm_engine)


def computed_alone(engine, ids):
    forget(engine)
    engine.share_prefixes = False
    try:
        return run(engine, ids)[0]
    finally:
        engine.share_prefixes = True
        forget(engine)


def shared_length(tokenizer):
    a, b = (prompt(tokenizer, q) for q in QUESTIONS[:2])
    n = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)
    assert n >= MIN_SHARED_PREFIX
    return n


def test_a_second_conversation_takes_the_shared_system_prompt(engine, smollm_tokenizer):
    first, second = (prompt(smollm_tokenizer, q) for q in QUESTIONS[:2])
    expected = computed_alone(engine, second)
    run(engine, first, engine.new_state())  # a conversation keeps its sequence
    before = engine.shared_tokens
    out, stats = run(engine, second, engine.new_state())
    assert stats.reused_tokens == shared_length(smollm_tokenizer)
    assert stats.computed_tokens == len(second) - stats.reused_tokens
    assert engine.shared_tokens - before == stats.reused_tokens
    assert out == expected


def test_the_lender_keeps_its_own_cache(engine, smollm_tokenizer):
    first, second = (prompt(smollm_tokenizer, q) for q in QUESTIONS[:2])
    state = engine.new_state()
    out, _ = run(engine, first, state)
    run(engine, second)  # borrows from the conversation's sequence
    follow = first + out + smollm_tokenizer.encode("\nAnd on Sundays?", add_special_tokens=False)
    again, stats = run(engine, follow, state)
    assert stats.reused_tokens == len(first) + len(out) - 1
    assert again == computed_alone(engine, follow)


def test_requests_arriving_together_compute_the_shared_prefix_once(engine, smollm_tokenizer):
    prompts = [prompt(smollm_tokenizer, q) for q in QUESTIONS]
    expected = [computed_alone(engine, ids) for ids in prompts]
    results: list = [None] * len(prompts)
    barrier = threading.Barrier(len(prompts))

    def worker(i):
        barrier.wait()
        results[i] = run(engine, prompts[i])

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    # Decoded side by side, a sequence's logits differ in the last bits from decoding it
    # alone (sharing or not), which can flip a near-tie after a few tokens: compare the start.
    assert [r[0][:5] for r in results] == [e[:5] for e in expected]
    reused = sorted(r[1].reused_tokens for r in results)
    assert reused[0] == 0 and reused[1:] == [shared_length(smollm_tokenizer)] * 2


def test_a_stateless_request_leaves_its_cache_for_the_next_one(engine, smollm_tokenizer):
    ids = prompt(smollm_tokenizer, QUESTIONS[0])
    out, _ = run(engine, ids)
    again, stats = run(engine, ids)
    assert stats.reused_tokens == len(ids) - 1  # one token is always computed, for its logits
    assert again == out


def test_a_cache_it_cannot_read_turns_sharing_off_and_still_answers(engine, smollm_tokenizer, monkeypatch):
    first, second = (prompt(smollm_tokenizer, q) for q in QUESTIONS[:2])
    expected = computed_alone(engine, second)
    run(engine, first, engine.new_state())

    def unreadable(sequence):
        raise StateFormatError("a cache layout this test made up")

    monkeypatch.setattr(engine, "_read", unreadable)
    out, stats = run(engine, second, engine.new_state())
    assert engine.share_prefixes is False
    assert stats.reused_tokens == 0
    assert out == expected


# -- busy sequences side by side --------------------------------------------------------
@pytest.fixture(scope="module")
def six(smollm_path, smollm_tokenizer):
    from chatforge.engines.llamacpp import LlamaCppEngine

    engine = LlamaCppEngine(smollm_path, smollm_tokenizer, context_length=512, n_parallel=6, n_threads=1)
    yield engine
    engine.close()


def test_busy_sequences_are_kept_side_by_side(six, smollm_tokenizer, monkeypatch):
    """llama.cpp computes a step in one pass only over consecutive sequence ids: requests
    continuing conversations cached at sequences 1, 3 and 5 are moved next to each other,
    keep their caches, and a gap left by the first to finish is closed."""
    engine = six
    states, follow = [], []
    for i in range(6):
        state = engine.new_state()
        ids = prompt(smollm_tokenizer, f"Tell me about bread number {i}.")
        out, _ = run(engine, ids, state)
        states.append(state)
        follow.append(ids + out + smollm_tokenizer.encode("\nAnd then?", add_special_tokens=False))
    assert sorted(s.cache[1] for s in states) == list(range(6))
    picked = [i for i, s in enumerate(states) if s.cache[1] in (1, 3, 5)]
    cached = {i: len(states[i].ids) for i in picked}
    lengths = dict(zip(picked, (3, 6, 9)))
    expected = {i: computed_alone_n(engine, follow[i], lengths[i]) for i in picked}
    assert all(len(states[i].ids) == cached[i] for i in picked)  # computed_alone_n left them alone

    steps = []
    decode = engine._lib.llama_decode

    def recording(ctx, batch):  # the sequences of each batch llama.cpp is given
        steps.append(sorted({batch.seq_id[n][0] for n in range(batch.n_tokens)}))
        return decode(ctx, batch)

    monkeypatch.setattr(engine._lib, "llama_decode", recording)
    moved = engine.moved_caches
    results = {}
    barrier = threading.Barrier(len(picked))

    def worker(i):
        barrier.wait()
        params = SamplingParams(do_sample=False, max_new_tokens=lengths[i])
        chunks = list(engine.stream(follow[i], params, state=states[i]))
        results[i] = ([t for c in chunks for t in c.token_ids], chunks[-1].stats)

    threads = [threading.Thread(target=worker, args=(i,)) for i in picked]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert engine.moved_caches > moved
    assert any(len(step) > 1 for step in steps)
    for step in steps:
        assert step == list(range(step[0], step[0] + len(step))), steps
    for i in picked:
        tokens, stats = results[i]
        assert stats.reused_tokens == cached[i]  # the moved cache was used, not recomputed
        assert tokens[:3] == expected[i][:3]


def computed_alone_n(engine, ids, n):
    """Greedy tokens for ``ids`` computed from scratch, leaving every cache as it was."""
    chunks = list(engine.stream(ids, SamplingParams(do_sample=False, max_new_tokens=n, seed=0)))
    return [t for c in chunks for t in c.token_ids]
