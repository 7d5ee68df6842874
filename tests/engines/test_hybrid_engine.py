"""The hybrid engine (transformers prefill, llama.cpp decode) on a real GGUF (SmolLM2-135M,
a llama-architecture conversion whose rotary pairs llama.cpp stores interleaved), and the
llama.cpp state bytes it writes."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from chatforge.engines.base import SamplingParams
from chatforge.engines.kvstate import SeqState, StateFormatError, read_state, write_state

from .conftest import need_llama_cpp
from .test_llamacpp_engine import chat_ids, run

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
def smollm_hf(smollm_path):
    need_llama_cpp()
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        smollm_path.parent, gguf_file=smollm_path.name, dtype=torch.bfloat16, local_files_only=True
    ).eval()


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
