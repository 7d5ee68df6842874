"""The hybrid engine (transformers prefill, llama.cpp decode) on a real GGUF (SmolLM2-135M,
a llama-architecture conversion whose rotary pairs llama.cpp stores interleaved), and the
llama.cpp state bytes it writes."""

from __future__ import annotations

import copy
import logging
import threading
import time

import numpy as np
import pytest
from smollm import chat_ids, need_llama_cpp, run

from chatforge.engines.base import SamplingParams
from chatforge.engines.kvstate import SeqState, StateFormatError, read_state, write_state

LONG = (
    "Here are some notes. The river runs east through the valley. The mill stands by the "
    "bridge. The baker opens at six and closes at noon. The library has three floors and a "
    "garden. Question: what is the capital of France? Answer in one word."
)


def random_state(v_trans: bool, cells: int = 5, layers: int = 3, width: int = 8) -> SeqState:
    rng = np.random.default_rng(0)
    return SeqState(
        seq_id=1,
        n_stream=3,
        stream=1,
        positions=np.arange(cells, dtype=np.int32),
        keys=[rng.standard_normal((cells, width)).astype(np.float16) for _ in range(layers)],
        values=[rng.standard_normal((cells, width)).astype(np.float16) for _ in range(layers)],
        v_trans=v_trans,
    )


@pytest.mark.parametrize("v_trans", [True, False])
def test_state_bytes_round_trip(v_trans):
    state = random_state(v_trans)
    data = write_state(state)
    back = read_state(data)
    assert (back.seq_id, back.n_stream, back.stream, back.v_trans) == (1, 3, 1, v_trans)
    assert np.array_equal(back.positions, state.positions)
    for a, b in zip(back.keys + back.values, state.keys + state.values):
        assert np.array_equal(a, b)
    assert write_state(back) == data


def test_foreign_state_bytes_are_refused():
    data = write_state(random_state(True))
    with pytest.raises(StateFormatError, match="ends early"):
        read_state(data[:-3])
    with pytest.raises(StateFormatError, match="left over"):
        read_state(data + b"\0")
    with pytest.raises(StateFormatError, match="magic"):
        read_state(b"\0\0\0\0" + data[4:])


@pytest.fixture(scope="module")
def smollm_hf(smollm_fp32):
    need_llama_cpp()
    import torch

    return copy.deepcopy(smollm_fp32).to(torch.bfloat16).eval()


@pytest.fixture(scope="module")
def hybrid(smollm_path, smollm_tokenizer, smollm_hf):
    from chatforge.engines.hybrid import HybridEngine

    engine = HybridEngine(
        smollm_path,
        smollm_tokenizer,
        smollm_hf,
        min_prefill=8,
        context_length=1024,
        n_parallel=3,
        n_threads=1,
    )
    yield engine
    engine.close()


def cached(engine, state) -> SeqState:
    return engine._read(engine._sequences[state.cache[1]])


def relative_difference(a: SeqState, b: SeqState) -> float:
    worst = 0.0
    for x, y in zip(a.keys + a.values, b.keys + b.values):
        x, y = x.astype(np.float32), y.astype(np.float32)
        worst = max(worst, float(np.abs(x - y).mean() / np.abs(y).mean()))
    return worst


def llama_only(hybrid, ids, params):
    """The same engine with llama.cpp computing the prompt itself: (tokens, state)."""
    saved, hybrid.min_prefill = hybrid.min_prefill, 10**9
    try:
        state = hybrid.new_state()
        return run(hybrid, ids, params, state)[0], state
    finally:
        hybrid.min_prefill = saved


def test_probe_finds_the_interleaved_rotary_layout(hybrid):
    info = hybrid.describe()
    assert info["hybrid_prefill"] and info["rotary"] == "interleaved", info
    assert info["v_trans"] is True and info["probe_error"] < 0.05


def test_prefilled_cache_matches_llama_cpps_own(hybrid, smollm_tokenizer):
    ids = chat_ids(smollm_tokenizer, LONG)
    params = SamplingParams(do_sample=False, max_new_tokens=8)
    mine = hybrid.new_state()
    before = hybrid.prefilled_tokens
    out, last = run(hybrid, ids, params, mine)
    assert hybrid.prefilled_tokens - before == len(ids)
    assert last.stats.computed_tokens == len(ids)
    assert "Paris" in smollm_tokenizer.decode(out)
    reference, theirs = llama_only(hybrid, ids, params)
    assert out[:2] == reference[:2]
    # Every layer's keys and values, position for position, within the Q4 weights' noise.
    assert relative_difference(cached(hybrid, mine), cached(hybrid, theirs)) < 0.08


def test_follow_up_turn_prefills_on_top_of_the_cached_prefix(hybrid, smollm_tokenizer):
    params = SamplingParams(do_sample=False, max_new_tokens=6)
    state = hybrid.new_state()
    first = chat_ids(smollm_tokenizer, "Name a colour.")
    out1, _ = run(hybrid, first, params, state)
    follow = first + out1 + smollm_tokenizer.encode("\n" + LONG, add_special_tokens=False)
    before = hybrid.prefilled_tokens
    out2, last = run(hybrid, follow, params, state)
    assert last.stats.reused_tokens == len(first) + len(out1) - 1
    assert hybrid.prefilled_tokens - before == len(follow) - last.stats.reused_tokens
    reference, whole = llama_only(hybrid, follow, params)
    assert out2[:2] == reference[:2]
    assert relative_difference(cached(hybrid, state), cached(hybrid, whole)) < 0.08


def test_a_failing_prefill_falls_back_to_llama_cpp(
    hybrid, smollm_engine, smollm_tokenizer, monkeypatch, caplog
):
    def broken(sequence, state):
        raise RuntimeError("simulated")

    for sequence in hybrid._sequences:  # nothing cached: the whole prompt is to compute
        hybrid._clear(sequence)
    monkeypatch.setattr(hybrid, "_write", broken)
    ids = chat_ids(smollm_tokenizer, LONG)
    params = SamplingParams(do_sample=False, max_new_tokens=8)
    with caplog.at_level(logging.WARNING, logger="chatforge.engines.hybrid"):
        out, last = run(hybrid, ids, params)
    assert "hybrid prefill failed" in caplog.text
    assert last.stats.computed_tokens == len(ids)
    assert out == run(smollm_engine, ids, params)[0]


def test_other_weights_turn_the_hybrid_path_off(
    smollm_path, smollm_tokenizer, smollm_hf, smollm_engine, caplog
):
    from transformers import AutoModelForCausalLM

    from chatforge.engines.hybrid import HybridEngine

    stranger = AutoModelForCausalLM.from_config(smollm_hf.config)  # same shapes, random weights
    with caplog.at_level(logging.WARNING, logger="chatforge.engines.hybrid"):
        engine = HybridEngine(
            smollm_path,
            smollm_tokenizer,
            stranger,
            min_prefill=8,
            context_length=512,
            n_parallel=1,
            n_threads=1,
        )
    try:
        assert not engine.hybrid_prefill
        assert "same weights" in caplog.text
        ids = chat_ids(smollm_tokenizer, LONG)
        params = SamplingParams(do_sample=False, max_new_tokens=6)
        assert run(engine, ids, params)[0] == run(smollm_engine, ids, params)[0]
        assert engine.prefilled_tokens == 0
    finally:
        engine.close()


def test_the_last_layer_mlp_runs_for_the_last_position_only(hybrid, smollm_hf, smollm_tokenizer):
    """A prefill needs the last layer's output at the last position alone: its MLP sees one
    row, and the logits and every layer's keys are those of a whole forward pass."""
    import numpy as np
    import torch

    ids = chat_ids(smollm_tokenizer, LONG)
    mlp = smollm_hf.model.layers[-1].mlp
    rows = []
    handle = mlp.register_forward_hook(lambda module, args, out: rows.append(args[0].shape[1]))
    try:
        keys, _, logits = hybrid._hf_prefill(ids, None)
        assert rows == [1]
        rows.clear()
        with torch.inference_mode():
            whole = smollm_hf(input_ids=torch.tensor([ids]), use_cache=True)
        assert rows == [len(ids)]
    finally:
        handle.remove()
    assert smollm_hf.model.layers[-1].mlp is mlp
    reference = whole.logits[0, -1].float().numpy()
    assert int(logits.argmax()) == int(reference.argmax())
    assert np.abs(logits - reference).max() < 0.02 * np.abs(reference).max()
    for mine, theirs in zip(keys, (layer.keys for layer in whole.past_key_values.layers)):
        assert torch.equal(mine, theirs)


# -- prompts arriving together: one forward pass --------------------------------------------
def test_prefill_groups_batch_prompts_of_similar_length():
    from chatforge.engines.hybrid import prefill_groups

    assert prefill_groups([]) == []
    assert prefill_groups([34, 35, 33]) == [[2, 0, 1]]
    # 1,000 tokens padded for a 40-token prompt would waste 960: two passes.
    assert prefill_groups([1000, 40]) == [[1], [0]]
    assert prefill_groups([40, 100, 45], max_waste=64) == [[0, 2], [1]]
    assert prefill_groups([600] * 4, max_tokens=2048) == [[0, 1, 2], [3]]


def test_a_batched_prefill_gives_each_prompt_its_own_cache_and_logits(hybrid, smollm_fp32, smollm_tokenizer):
    """Rows of different lengths, with and without a cached prefix, computed together: the
    same keys, values and logits as each computed alone (in float32, where a batch's
    different summation order stays far below what a wrong mask or position would do)."""

    long_ids = chat_ids(smollm_tokenizer, LONG)
    short_ids = chat_ids(smollm_tokenizer, "Name a colour.")
    other = chat_ids(smollm_tokenizer, "What is the capital of Italy? Answer in one word.")
    sequence = hybrid._sequences[0]
    bf16 = hybrid._hf
    hybrid._hf = smollm_fp32
    try:
        hybrid._clear(sequence)
        keys, values, _ = hybrid._hf_prefill(other[:9], None)
        hybrid._store(sequence, keys, values, other[:9])
        past = hybrid._read(sequence)
        hybrid._clear(sequence)
        rows = [(long_ids, None), (short_ids, None), (other[9:], past)]
        together = hybrid._hf_prefill_batch(rows)
        alone = [hybrid._hf_prefill(ids, prefix) for ids, prefix in rows]
    finally:
        hybrid._hf = bf16
    for (ids, prefix), (keys, values, logits), (alone_keys, alone_values, alone_logits) in zip(
        rows, together, alone
    ):
        assert np.abs(logits - alone_logits).max() < 1e-3 * np.abs(alone_logits).max()
        cells = len(ids) + (prefix.n_cells if prefix is not None else 0)
        for mine, theirs in zip(keys + values, alone_keys + alone_values):
            assert mine.shape == theirs.shape and mine.shape[2] == cells
            assert float((mine - theirs).abs().max()) < 1e-3 * float(theirs.abs().max())


def arriving_together(hybrid, prompts, params) -> list:
    """Run the prompts as requests that reach the engine's worker together: (tokens, last chunk) each."""
    hybrid.share_prefixes = False  # each prompt whole: all of them wait for no one
    results: list = [None] * len(prompts)
    barrier = threading.Barrier(len(prompts))

    def worker(i):
        barrier.wait()
        results[i] = run(hybrid, prompts[i], params)

    gate = threading.Event()
    has_work = hybrid._has_work
    # The worker sees no work until all the requests wait: it then admits them in one go
    # (held later, at its step, it could already have taken the first one alone).
    hybrid._has_work = lambda: gate.is_set() and has_work()
    try:
        threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(prompts))]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 30
        while len(hybrid._waiting) < len(prompts):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        with hybrid._cond:
            gate.set()
            hybrid._cond.notify_all()
        for t in threads:
            t.join(timeout=120)
    finally:
        del hybrid._has_work
        hybrid.share_prefixes = True
    return results


def test_prompts_arriving_together_are_prefilled_in_one_pass(hybrid, smollm_tokenizer):
    questions = [
        "What is the capital of France? Answer in one word, please, and nothing else at all.",
        "Name three colours of the rainbow, one word each, separated by commas, nothing else.",
        "Write the numbers from one to five as words, separated by commas, and nothing else.",
    ]
    prompts = [chat_ids(smollm_tokenizer, q) for q in questions]
    params = SamplingParams(do_sample=False, max_new_tokens=6)
    for sequence in hybrid._sequences:
        hybrid._clear(sequence)
    alone = []
    for ids in prompts:
        before = hybrid.prefill_passes
        alone.append(run(hybrid, ids, params)[0])
        assert hybrid.prefill_passes == before + 1
        for sequence in hybrid._sequences:
            hybrid._clear(sequence)
    passes, tokens = hybrid.prefill_passes, hybrid.prefilled_tokens
    results = arriving_together(hybrid, prompts, params)
    assert hybrid.prefill_passes - passes == 1
    assert hybrid.prefilled_tokens - tokens == sum(len(p) for p in prompts)
    assert [r[0][:3] for r in results] == [a[:3] for a in alone]
    assert all(r[1].stats.computed_tokens == len(p) for r, p in zip(results, prompts))


def test_short_prompts_are_prefilled_together_once_a_pass_is_worth_it(hybrid, smollm_tokenizer):
    """``min_prefill`` counts the new tokens of a whole pass: a short prompt alone stays
    with llama.cpp, two of them together go through transformers."""
    prompts = [chat_ids(smollm_tokenizer, q) for q in ("Name a colour.", "Name a fruit.")]
    params = SamplingParams(do_sample=False, max_new_tokens=4)
    saved, hybrid.min_prefill = hybrid.min_prefill, max(len(p) for p in prompts) + 1
    try:
        for sequence in hybrid._sequences:
            hybrid._clear(sequence)
        passes, tokens = hybrid.prefill_passes, hybrid.prefilled_tokens
        alone = [arriving_together(hybrid, [ids], params)[0] for ids in prompts]
        assert (hybrid.prefill_passes, hybrid.prefilled_tokens) == (passes, tokens)
        for sequence in hybrid._sequences:
            hybrid._clear(sequence)
        together = arriving_together(hybrid, prompts, params)
    finally:
        hybrid.min_prefill = saved
    assert hybrid.prefill_passes == passes + 1
    assert hybrid.prefilled_tokens == tokens + sum(len(p) for p in prompts)
    assert [r[0][:2] for r in together] == [a[0][:2] for a in alone]
    assert all(r[1].stats.computed_tokens == len(p) for r, p in zip(together, prompts))


@pytest.mark.parametrize("extra_buffers", [False, None])
def test_min_prefill_follows_llama_cpps_kernels(smollm_path, smollm_tokenizer, smollm_hf, extra_buffers):
    """llama.cpp's AMX path computes short prompts two to three times as fast: the hybrid prefill
    starts to pay later there (benchmarks/prefill_crossover.py)."""
    from chatforge.engines.hybrid import AMX_MIN_PREFILL, DEFAULT_MIN_PREFILL, HybridEngine

    engine = HybridEngine(
        smollm_path,
        smollm_tokenizer,
        smollm_hf,
        extra_buffers=extra_buffers,
        context_length=256,
        n_parallel=1,
        n_threads=1,
    )
    try:
        if extra_buffers is False:
            assert not engine.extra_buffers
        assert engine.min_prefill == (AMX_MIN_PREFILL if engine.extra_buffers else DEFAULT_MIN_PREFILL)
    finally:
        engine.close()
