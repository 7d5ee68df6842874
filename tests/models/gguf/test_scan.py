"""The fast GGUF tensor list (chatforge.models.gguf.scan) against gguf-py's full reader."""

from __future__ import annotations

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")


def write_sample(path):
    """A small GGUF with metadata of every kind a real file has (a vocabulary among them)."""
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_uint32("llama.block_count", 2)
    writer.add_float32("llama.rope.freq_base", 10000.0)
    writer.add_float64("sample.f64", 0.5)
    writer.add_bool("sample.flag", True)
    writer.add_int64("sample.i64", -3)
    writer.add_string("general.name", "样例 sample")
    writer.add_array("tokenizer.ggml.tokens", ["<s>", "</s>", "你好", "hello", ""] * 200)
    writer.add_array("tokenizer.ggml.token_type", [1, 3, 1, 1, 1] * 200)
    writer.add_array("tokenizer.ggml.scores", [0.0, -1.5, 2.0, 3.0, 4.0] * 200)
    rng = np.random.default_rng(0)
    writer.add_tensor("token_embd.weight", rng.standard_normal((16, 64), dtype=np.float32))
    q8 = gguf.quants.quantize(rng.standard_normal((8, 64), dtype=np.float32), gguf.GGMLQuantizationType.Q8_0)
    writer.add_tensor("blk.0.attn_q.weight", q8, raw_shape=q8.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    writer.add_tensor("output_norm.weight", np.ones(64, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file(progress=False)
    writer.close()
    return path


def test_tensor_list_matches_gguf_pys_reader(tmp_path):
    from chatforge.models.gguf.scan import tensors

    path = write_sample(tmp_path / "sample.gguf")
    mine = [(t.name, t.type, t.shape, t.n_elements) for t in tensors(path)]
    theirs = [
        (t.name, int(t.tensor_type), tuple(int(d) for d in t.shape), int(t.n_elements))
        for t in gguf.GGUFReader(str(path)).tensors
    ]
    assert mine == theirs
    assert [name for name, *_ in mine] == ["token_embd.weight", "blk.0.attn_q.weight", "output_norm.weight"]
    assert mine[1][1] == gguf.GGMLQuantizationType.Q8_0 and mine[1][2] == (64, 8)


def test_files_that_are_not_gguf_are_named_in_the_error(tmp_path):
    from chatforge.models.gguf.scan import GGUFScanError, tensors

    other = tmp_path / "weights.bin"
    other.write_bytes(b"PK\x03\x04 a zip file, say")
    with pytest.raises(GGUFScanError, match="weights.bin: not a GGUF file"):
        tensors(other)
    empty = tmp_path / "empty.gguf"
    empty.write_bytes(b"")
    with pytest.raises(GGUFScanError, match="empty.gguf: not a GGUF file"):
        tensors(empty)
    whole = write_sample(tmp_path / "sample.gguf").read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(whole[:2000])  # inside the vocabulary
    with pytest.raises(GGUFScanError, match="cut.gguf"):
        tensors(cut)
