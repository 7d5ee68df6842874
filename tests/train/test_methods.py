"""Methods: each lowers the loss of a tiny random model; LoRA merges exactly; QLoRA refuses on CPU."""

from __future__ import annotations

import pytest
import torch
from tiny import make_model  # noqa: E402

from chatforge.train.config import LoraConfig, PTuningConfig
from chatforge.train.export import ExportError, merge_adapter
from chatforge.train.methods import (
    MethodError,
    apply_method,
    check_qlora,
    indistinct_output_rows,
    target_modules,
)


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


@pytest.mark.parametrize("method", ["lora", "adalora"])
def test_layers_restrict_the_adapted_layers(tiny_tokenizer, method):
    config = LoraConfig(r=2, init_r=4, layers=[1])
    model = apply_method(make_model(tiny_tokenizer), method, config, PTuningConfig(), 10)
    adapted = {n.split(".layers.")[1].split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert adapted == {"1"}
    with pytest.raises(MethodError, match=r"lora.layers \[2\]: this model has layers 0-1"):
        apply_method(make_model(tiny_tokenizer), method, LoraConfig(layers=[2]), PTuningConfig(), 10)


def test_indistinct_output_rows_finds_rows_that_point_the_same_way(tiny_tokenizer):
    model = make_model(tiny_tokenizer)
    with torch.no_grad():
        row = model.lm_head.weight[5].clone()
        model.lm_head.weight[6] = 2 * row  # same direction, other norm
        model.lm_head.weight[7] = row
    assert indistinct_output_rows(model, {5, 6, 7, 8}) == {5: 2, 6: 2, 7: 2}
    assert indistinct_output_rows(model, {8, 9}) == {}


def test_trainable_tokens_train_their_embedding_and_output_rows_only(tiny_tokenizer):
    im_end = tiny_tokenizer.convert_tokens_to_ids("<|im_end|>")
    base = make_model(tiny_tokenizer)
    before_out = base.lm_head.weight.detach().clone()
    before_in = base.get_input_embeddings().weight.detach().clone()
    model = apply_method(
        base.train(),
        "lora",
        LoraConfig(r=2, trainable_tokens=["<|im_end|>"]),
        PTuningConfig(),
        10,
        tiny_tokenizer,
    )
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-2)
    inputs = batch(tiny_tokenizer)
    inputs["labels"][:, -1] = im_end
    for _ in range(3):
        model(**inputs).loss.backward()
        opt.step()
        opt.zero_grad()
    merged = model.merge_and_unload()
    changed_out = (merged.lm_head.weight != before_out).any(dim=1).nonzero().flatten().tolist()
    changed_in = (merged.get_input_embeddings().weight != before_in).any(dim=1).nonzero().flatten().tolist()
    assert changed_out == [im_end] and changed_in == [im_end]


def test_trainable_tokens_are_saved_with_the_adapter(tiny_tokenizer, tmp_path):
    from peft import PeftModel

    model = apply_method(
        make_model(tiny_tokenizer), "lora", LoraConfig(r=2, trainable_tokens=["<|im_end|>"]), PTuningConfig(),
        10, tiny_tokenizer,
    )  # fmt: skip
    im_end = tiny_tokenizer.convert_tokens_to_ids("<|im_end|>")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "trainable_tokens_delta" in name:
                p.add_(0.5)
    model.save_pretrained(tmp_path / "adapter")
    inputs = batch(tiny_tokenizer)
    inputs.pop("labels")
    expected = model(**inputs).logits
    reloaded = PeftModel.from_pretrained(make_model(tiny_tokenizer), tmp_path / "adapter")
    assert torch.allclose(reloaded(**inputs).logits, expected, atol=1e-5)
    assert not torch.allclose(make_model(tiny_tokenizer)(**inputs).logits[..., im_end], expected[..., im_end])


def test_trainable_tokens_must_be_single_tokens(tiny_tokenizer):
    with pytest.raises(MethodError, match="'<tool_call>' is not a single token of this tokenizer"):
        apply_method(
            make_model(tiny_tokenizer), "lora", LoraConfig(trainable_tokens=["<tool_call>"]), PTuningConfig(),
            10, tiny_tokenizer,
        )  # fmt: skip
    with pytest.raises(MethodError, match="needs the tokenizer"):
        apply_method(
            make_model(tiny_tokenizer), "lora", LoraConfig(trainable_tokens=["<|im_end|>"]), PTuningConfig()
        )
