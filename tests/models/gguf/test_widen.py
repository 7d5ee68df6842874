"""Q5_0 matrices rewritten as Q8_0 for llama.cpp's AMX kernels: the same weights, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
Q = gguf.GGMLQuantizationType


def random_q5_0_blocks(rows: int, blocks: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, size=(rows, blocks, 22), dtype=np.uint8)
    scales = rng.normal(0, 0.02, size=(rows, blocks)).astype(np.float16)
    raw[:, :, :2] = scales.view(np.uint8).reshape(rows, blocks, 2)  # finite scales
    return raw.reshape(rows, blocks * 22)


def test_q5_0_blocks_become_q8_0_blocks_with_the_same_values():
    from chatforge.models.gguf.widen import q5_0_as_q8_0

    raw = random_q5_0_blocks(7, 5)  # every bit pattern of the 5-bit values is as likely
    wide = q5_0_as_q8_0(raw)
    assert wide.shape == (7, 5 * 34)
    before = gguf.quants.dequantize(raw, Q.Q5_0)
    after = gguf.quants.dequantize(wide, Q.Q8_0)
    assert np.array_equal(before, after)
    values = wide.reshape(-1, 34)[:, 2:].view(np.int8)
    assert values.min() >= -16 and values.max() <= 15


def write_model(path, tensors):
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("widen test")
    writer.add_context_length(64)
    writer.add_array("tokenizer.ggml.tokens", ["a", "b", "c"])
    for name, data, kind in tensors:
        writer.add_tensor(name, data, raw_shape=data.shape if kind != Q.F32 else None, raw_dtype=kind)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q5_0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_widened_file_keeps_metadata_lookups_and_values(monkeypatch, tmp_path):
    from chatforge.models.gguf.widen import needs_widening, widened

    monkeypatch.setenv("CHATFORGE_HOME", str(tmp_path / "home"))
    matrix = gguf.quants.quantize(np.random.default_rng(1).normal(size=(8, 64)).astype(np.float32), Q.Q5_0)
    embed = gguf.quants.quantize(np.random.default_rng(2).normal(size=(3, 64)).astype(np.float32), Q.Q5_0)
    q8 = gguf.quants.quantize(np.random.default_rng(3).normal(size=(4, 64)).astype(np.float32), Q.Q8_0)
    norm = np.linspace(0.5, 1.5, 64, dtype=np.float32)
    source = tmp_path / "model.gguf"
    write_model(
        source,
        [
            ("token_embd.weight", embed, Q.Q5_0),
            ("blk.0.ffn_up.weight", matrix, Q.Q5_0),
            ("blk.0.attn_v.weight", q8, Q.Q8_0),
            ("blk.0.attn_norm.weight", norm, Q.F32),
        ],
    )
    assert needs_widening(source)
    out = widened(source, progress=False)
    assert out.parent == tmp_path / "home" / "gguf" and out.exists()
    assert widened(source, progress=False) == out  # once: kept in the cache

    before = {t.name: t for t in gguf.GGUFReader(str(source)).tensors}
    reader = gguf.GGUFReader(str(out))
    after = {t.name: t for t in reader.tensors}
    assert list(after) == list(before)
    assert after["blk.0.ffn_up.weight"].tensor_type == Q.Q8_0
    assert after["token_embd.weight"].tensor_type == Q.Q5_0  # a row lookup: left as it is
    for name in ("token_embd.weight", "blk.0.attn_v.weight", "blk.0.attn_norm.weight"):
        assert np.array_equal(np.asarray(after[name].data), np.asarray(before[name].data)), name
    assert np.array_equal(
        gguf.quants.dequantize(after["blk.0.ffn_up.weight"].data, Q.Q8_0),
        gguf.quants.dequantize(before["blk.0.ffn_up.weight"].data, Q.Q5_0),
    )
    assert reader.fields["general.name"].contents() == "widen test"
    assert reader.fields["tokenizer.ggml.tokens"].contents() == ["a", "b", "c"]
    assert reader.fields["general.file_type"].contents() == int(gguf.LlamaFileType.MOSTLY_Q8_0)
    assert not needs_widening(out)
    assert not list(out.parent.glob(".*partial"))
