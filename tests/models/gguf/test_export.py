"""GGUF export: a LoRA merged into SmolLM2-135M (a llama-architecture GGUF, whose Q/K rows
llama.cpp stores interleaved) is written back to GGUF with the base's metadata, and
llama.cpp decodes it token for token as transformers decodes the merged model."""

from __future__ import annotations

import copy
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from chatforge.engines.amx import on_llama_thread
from chatforge.models.gguf.export import GGUFExportError, write_gguf


@pytest.fixture(scope="module")
def smollm(smollm_path):
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama-cpp-python is not installed")
    from chatforge.engines.select import gguf_tokenizer

    return smollm_path, gguf_tokenizer(smollm_path)


@on_llama_thread  # llama.cpp's AMX tiles and PyTorch never share a thread (engines/amx.py)
def llama_logits(path: Path, ids: list[int]) -> np.ndarray:
    """llama.cpp's next-token logits at every position of ``ids`` (one forward pass)."""
    import llama_cpp

    llm = llama_cpp.Llama(str(path), n_ctx=512, n_threads=1, logits_all=True, verbose=False)
    llm.eval(ids)
    logits = np.array(llm.scores[: len(ids)], dtype=np.float32)
    llm.close()
    return logits


def tensor(path: Path, name: str) -> np.ndarray:
    import gguf

    t = next(t for t in gguf.GGUFReader(str(path)).tensors if t.name == name)
    return np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32)


def test_export_cli_writes_a_gguf_llama_cpp_decodes_like_the_merged_model(
    smollm, smollm_fp32, tmp_path, capsys
):
    from peft import LoraConfig, get_peft_model

    from chatforge.cli import main

    path, tokenizer = smollm
    base = copy.deepcopy(smollm_fp32)
    torch.manual_seed(0)  # the same adapter in every run: lora_A is drawn at creation
    peft = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj"]))
    with torch.no_grad():  # a trained-looking adapter: B is zero at initialisation
        for name, param in peft.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.02)
    adapter = tmp_path / "final"
    peft.save_pretrained(adapter)
    tokenizer.save_pretrained(adapter)
    (adapter / "chatforge_train.json").write_text(json.dumps({"base_model": str(path), "method": "lora"}))
    merged = peft.merge_and_unload().eval()

    out = tmp_path / "merged"
    assert main(["export", str(adapter), "--output", str(out), "--gguf", "--gguf-type", "f16"]) == 0
    gguf_path = out / "model-f16.gguf"
    assert f"--model {gguf_path} --engine hybrid --prefill-model {out}" in capsys.readouterr().out
    # The adapter changed the attention weights, and the GGUF carries the change.
    assert not np.allclose(
        tensor(gguf_path, "blk.0.attn_q.weight"), tensor(path, "blk.0.attn_q.weight"), atol=1e-3
    )
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        tokenize=True,
        return_dict=False,
    )
    with torch.no_grad():
        sequence = merged.generate(torch.tensor([ids]), max_new_tokens=10, do_sample=False)[0]
        expected = merged(sequence[None]).logits[0].numpy()
    # Teacher-forced over the prompt and transformers' greedy answer: llama.cpp's logits match
    # within the F16 weights' rounding (0.04-0.12 over twelve adapters, with and without
    # llama.cpp's AMX buffer; a wrong Q/K row order is off by whole units), so its greedy choice
    # is transformers' wherever that choice is clear. At near-ties (top-2 gaps under 0.01 occur)
    # either kernel may pick the other token, which a token-for-token comparison took for a bug.
    got = llama_logits(gguf_path, sequence.tolist())
    answer = slice(len(ids) - 1, len(sequence) - 1)
    assert np.abs(got - expected)[answer].max() < 0.5
    top2 = np.sort(expected[answer], axis=-1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 1.0
    assert clear.sum() >= 5, "too few clear choices to compare"
    assert (got[answer].argmax(-1) == sequence[len(ids) :].numpy())[clear].all()


def test_quantized_export_and_a_foreign_template_is_refused(smollm, smollm_fp32, tmp_path):
    from transformers import AutoModelForCausalLM

    path, _ = smollm
    model = smollm_fp32
    q8 = write_gguf(model, path, tmp_path / "m-q8.gguf", "q8_0", progress=False)
    f16_size = sum(p.numel() for p in model.parameters()) * 2
    assert 0.4 * f16_size < q8.stat().st_size < 0.7 * f16_size
    assert not list(tmp_path.glob(".*"))  # no temporary file left behind
    q4 = write_gguf(model, path, tmp_path / "m-q4_0.gguf", "q4_0", progress=False)
    assert 0.2 * f16_size < q4.stat().st_size < 0.45 * f16_size
    import gguf

    kinds = {t.tensor_type.name for t in gguf.GGUFReader(q4).tensors if len(t.shape) == 2}
    assert "Q4_0" in kinds and "Q4_K" not in kinds, kinds
    stranger = AutoModelForCausalLM.from_config(model.config)  # same shapes, other weights
    with pytest.raises(GGUFExportError, match="not a fine-tune of that base"):
        write_gguf(stranger, path, tmp_path / "x.gguf", "f16", progress=False)
    assert not (tmp_path / "x.gguf").exists()
