"""Methods: each lowers the loss of a tiny random model; LoRA merges exactly; QLoRA refuses on CPU."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parents[1]))
from tiny import make_model  # noqa: E402

from chatforge.train.config import LoraConfig, PTuningConfig
from chatforge.train.export import ExportError, merge_adapter
from chatforge.train.methods import MethodError, apply_method, check_qlora, target_modules


def batch(tokenizer):
    ids = tokenizer("Hello, how are you? I am fine, thank you. 你好，请介绍一下你自己。")["input_ids"]
    t = torch.tensor([ids, ids])
    return {"input_ids": t, "labels": t.clone(), "attention_mask": torch.ones_like(t)}


@pytest.mark.parametrize("method", ["lora", "adalora", "ptuning_v2", "full"])
def test_a_few_steps_lower_the_loss(tiny_tokenizer, method):
    model = make_model(tiny_tokenizer).train()
    model.config.use_cache = False
    model = apply_method(
        model, method, LoraConfig(r=4, init_r=6, dropout=0.0), PTuningConfig(num_virtual_tokens=4), 20
    )
    trainable = [p for p in model.parameters() if p.requires_grad]
    total = sum(p.numel() for p in model.parameters())
    if method != "full":
        assert sum(p.numel() for p in trainable) < total / 2
    # Prefixes move the loss of a random model slowly; they get a larger step.
    opt = torch.optim.AdamW(trainable, lr=2e-1 if method == "ptuning_v2" else 1e-2)
    inputs = batch(tiny_tokenizer)
    losses = []
    for _ in range(8):
        loss = model(**inputs).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - (0.3 if method == "ptuning_v2" else 0.5), losses


def test_lora_merge_is_exact(tiny_tokenizer, tmp_path):
    model = make_model(tiny_tokenizer)
    peft_model = apply_method(
        model, "lora", LoraConfig(r=4, alpha=8, target_modules=["q_proj"]), PTuningConfig()
    )
    torch.manual_seed(1)
    layer = peft_model.base_model.model.model.layers[0].self_attn.q_proj
    with torch.no_grad():
        layer.lora_B["default"].weight.normal_()
    weight = layer.base_layer.weight.detach().clone()
    a, b = layer.lora_A["default"].weight.detach().clone(), layer.lora_B["default"].weight.detach().clone()
    peft_model.save_pretrained(tmp_path / "adapter")
    merged = merge_adapter(make_model(tiny_tokenizer), tmp_path / "adapter")
    expected = weight + (8 / 4) * b @ a
    torch.testing.assert_close(merged.model.layers[0].self_attn.q_proj.weight, expected, rtol=0, atol=1e-6)
    assert not any("lora" in name for name, _ in merged.named_parameters())


def test_prefix_tuning_cannot_be_merged(tiny_tokenizer, tmp_path):
    model = apply_method(
        make_model(tiny_tokenizer), "ptuning_v2", LoraConfig(), PTuningConfig(num_virtual_tokens=2)
    )
    model.save_pretrained(tmp_path / "prefix")
    with pytest.raises(ExportError, match="PREFIX_TUNING adapter cannot be merged.*--adapter"):
        merge_adapter(make_model(tiny_tokenizer), tmp_path / "prefix")


def test_prefix_tuned_model_generates_with_a_cache(tiny_tokenizer):
    model = apply_method(
        make_model(tiny_tokenizer), "ptuning_v2", LoraConfig(), PTuningConfig(num_virtual_tokens=3)
    ).eval()
    ids = torch.tensor([tiny_tokenizer("Hello")["input_ids"]])
    out = model.generate(input_ids=ids, max_new_tokens=4, do_sample=False)
    assert out.shape[1] == ids.shape[1] + 4


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU refusal")
def test_qlora_refuses_without_cuda():
    with pytest.raises(MethodError, match="QLoRA needs a CUDA GPU"):
        check_qlora()


def test_unknown_architecture_needs_target_modules(tiny_tokenizer):
    model = make_model(tiny_tokenizer)
    model.config.model_type = "mystery"
    with pytest.raises(MethodError, match="set lora.target_modules .*q_proj"):
        target_modules(model, [])
