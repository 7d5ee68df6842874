"""``--quantize q4_0|iq4_nl|q8_0``: llama.cpp re-quantizes a GGUF file once, into the cache,
showing progress; the llama.cpp engine then decodes with it. On SmolLM2-135M (Q4_1)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from chatforge.models.gguf.export import GGUFExportError, requantized


@pytest.fixture(scope="module")
def smollm(smollm_path) -> Path:
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama-cpp-python is not installed")
    return smollm_path


def tensors(path: Path) -> dict[str, tuple[str, np.ndarray]]:
    import gguf

    return {
        t.name: (
            t.tensor_type.name,
            np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32),
        )
        for t in gguf.GGUFReader(str(path)).tensors
    }


def test_requantized_once_into_the_cache_with_progress_and_close_weights(
    smollm, tmp_path, monkeypatch, capfd
):
    monkeypatch.setenv("CHATFORGE_HOME", str(tmp_path))
    out = requantized(smollm, "q4_0")
    err = capfd.readouterr().err
    assert out.parent == tmp_path / "gguf" and out.name.startswith("SmolLM2-135M-Instruct.Q4_1-q4_0-")
    assert "quantizing to q4_0" in err and "100%" in err, err[-500:]
    assert "warning" not in err.lower()  # llama.cpp's per-tensor chatter is kept out of the terminal
    assert not list(out.parent.glob(".*partial"))

    before, after = tensors(smollm), tensors(out)
    assert before.keys() == after.keys()
    kinds = {kind for kind, _ in after.values()}
    assert "Q4_0" in kinds and "Q4_1" not in kinds, kinds
    for name in ("blk.0.attn_q.weight", "blk.5.ffn_down.weight"):
        old, new = before[name][1], after[name][1]
        assert np.abs(new - old).mean() < 0.15 * np.abs(old).mean(), name

    stamp = out.stat().st_mtime_ns
    assert requantized(smollm, "q4_0") == out and out.stat().st_mtime_ns == stamp  # cached: not redone
    assert "quantizing" not in capfd.readouterr().err


def test_unknown_type_is_named(smollm, tmp_path, monkeypatch):
    monkeypatch.setenv("CHATFORGE_HOME", str(tmp_path))
    with pytest.raises(GGUFExportError, match="'q2_k'.* can be re-quantized to q4_0, iq4_nl, q8_0"):
        requantized(smollm, "q2_k")
    assert not (tmp_path / "gguf").exists() or not list((tmp_path / "gguf").iterdir())


def test_load_model_decodes_with_the_requantized_file(smollm, tmp_path, monkeypatch):
    from chatforge.chat import load_model
    from chatforge.engines.sampling import SamplingParams

    monkeypatch.setenv("CHATFORGE_HOME", str(tmp_path))
    model = load_model(smollm, engine="llama.cpp", quantize="q4_0", context_length=512)
    try:
        assert Path(model.engine.model_path).parent == tmp_path / "gguf"
        ids = model.engine.tokenizer.apply_chat_template(
            [{"role": "user", "content": "What is the capital of France?"}],
            add_generation_prompt=True,
            tokenize=True,
            return_dict=False,
        )
        out = list(model.engine.stream(ids, SamplingParams(do_sample=False, max_new_tokens=16)))
        text = "".join(chunk.text for chunk in out)
        assert "Paris" in text, text
    finally:
        model.engine.close()


def test_iq4_nl_quantizes_the_output_layer_too(smollm, tmp_path, monkeypatch):
    """llama.cpp keeps the output layer (SmolLM2's tied token_embd) at 8 bits for Q4_0; IQ4_NL
    puts it in IQ4_NL too, as chatforge asks (the layer is a third of each step's bytes)."""
    import gguf

    monkeypatch.setenv("CHATFORGE_HOME", str(tmp_path))

    def output_type(path: Path) -> str:
        return next(
            t.tensor_type.name for t in gguf.GGUFReader(str(path)).tensors if t.name == "token_embd.weight"
        )

    assert output_type(requantized(smollm, "q4_0", progress=False)) == "Q8_0"
    assert output_type(requantized(smollm, "iq4_nl", progress=False)) == "IQ4_NL"
