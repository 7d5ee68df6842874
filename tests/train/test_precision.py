"""Training speed-ups that must not change what is computed: frozen linears held in bf16
under autocast, AdaLoRA's lean forward pass, and logits only where the loss reads them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import AdaLoraConfig, LoraConfig, get_peft_model
from tiny import make_model  # noqa: E402

from chatforge.train.config import build_config
from chatforge.train.lean_adalora import lean_adalora
from chatforge.train.precision import frozen_linears_in_bf16, full_precision, parameters_in_bf16
from chatforge.train.trainer import train

IDS = torch.tensor([[5, 9, 13, 2, 7, 11, 4, 3], [8, 6, 12, 10, 1, 14, 15, 16]])


def lora(tokenizer):
    config = LoraConfig(r=4, target_modules=["gate_proj", "up_proj", "down_proj"], lora_dropout=0.0)
    model = get_peft_model(make_model(tokenizer), config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)  # LoRA starts as the identity: make the adapter count
    return model


def adalora(tokenizer):
    config = AdaLoraConfig(
        target_modules=["gate_proj", "up_proj", "down_proj"], r=4, init_r=6, total_step=10, lora_dropout=0.0
    )
    model = get_peft_model(make_model(tokenizer), config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_E" in name:
                p.normal_(0, 0.5)  # AdaLoRA's singular values start at zero
    return model


def bf16_logits(model) -> torch.Tensor:
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        return model(input_ids=IDS).logits.float()


# -- frozen linears in bf16 ------------------------------------------------------------------
def test_frozen_linears_in_bf16_compute_what_autocast_did_and_are_put_back(tiny_tokenizer):
    model = lora(tiny_tokenizer)
    before = {n: p for n, p in model.named_parameters()}
    values = {n: p.detach().clone() for n, p in before.items()}
    expected = bf16_logits(model)
    with frozen_linears_in_bf16(model) as n:
        # 2 layers × 7 linears, and the output layer; the adapters' own linears are trained
        assert n == 2 * 7 + 1
        dtypes = {name: p.dtype for name, p in model.named_parameters()}
        assert dtypes["base_model.model.model.layers.0.self_attn.q_proj.weight"] == torch.bfloat16
        assert dtypes["base_model.model.model.layers.0.self_attn.q_proj.bias"] == torch.bfloat16
        assert dtypes["base_model.model.lm_head.weight"] == torch.bfloat16
        assert dtypes["base_model.model.model.embed_tokens.weight"] == torch.float32  # not autocast
        assert dtypes["base_model.model.model.layers.0.mlp.up_proj.lora_A.default.weight"] == torch.float32
        assert torch.equal(bf16_logits(model), expected)  # bit for bit: autocast made the same cast
        with full_precision(model):
            assert all(p.dtype == torch.float32 for p in model.parameters())
            assert model.model.model.layers[0].mlp.up_proj.base_layer.weight is before[
                "base_model.model.model.layers.0.mlp.up_proj.base_layer.weight"
            ]
        assert model.base_model.model.lm_head.weight.dtype == torch.bfloat16
    after = dict(model.named_parameters())
    assert all(after[n] is p and torch.equal(p, values[n]) for n, p in before.items())
    with full_precision(model):  # nothing to do outside
        assert all(p.dtype == torch.float32 for p in model.parameters())


def test_a_linear_sharing_its_weight_with_the_embedding_stays_float32(tiny_tokenizer):
    model = make_model(tiny_tokenizer)
    model.lm_head.weight = model.model.embed_tokens.weight  # tied, as many small models are
    model.requires_grad_(False)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    with frozen_linears_in_bf16(model) as n:
        assert n == 2 * 7
        assert model.lm_head.weight is model.model.embed_tokens.weight
        assert model.lm_head.weight.dtype == torch.float32


def test_trainable_and_already_bf16_linears_are_left_alone(tiny_tokenizer):
    model = make_model(tiny_tokenizer)  # every parameter trainable (full fine-tuning)
    with frozen_linears_in_bf16(model) as n:
        assert n == 0
    model.requires_grad_(False)
    model.to(torch.bfloat16)
    with frozen_linears_in_bf16(model) as n:
        assert n == 0


def test_parameters_in_bf16_compute_as_the_model_loaded_in_bf16(tiny_tokenizer, tmp_path):
    """The retention check's "base model in bfloat16" is the model `chatforge serve` loads
    in bfloat16, to the bit; the float32 tensors come back untouched."""
    from transformers import AutoModelForCausalLM

    model = make_model(tiny_tokenizer).float().eval()
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.bfloat16).eval()
    originals = [(p.data_ptr(), p.detach().clone()) for p in model.parameters()]
    with torch.no_grad():
        before = model(IDS).logits
        with parameters_in_bf16(model):
            assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
            cast = model(IDS).logits
        assert torch.equal(cast, loaded(IDS).logits)
        assert not torch.equal(cast.float(), before)  # bfloat16 does change the logits
        for p, (address, values) in zip(model.parameters(), originals, strict=True):
            assert p.dtype == torch.float32 and p.data_ptr() == address and torch.equal(p, values)
        assert torch.equal(model(IDS).logits, before)


# -- AdaLoRA's lean forward ------------------------------------------------------------------
def test_lean_adalora_gives_peft_results_and_gradients(tiny_tokenizer):
    model = adalora(tiny_tokenizer)
    trained = [p for p in model.parameters() if p.requires_grad]

    def run() -> tuple[torch.Tensor, list[torch.Tensor]]:
        model.zero_grad()
        logits = model(input_ids=IDS).logits
        logits.logsumexp(-1).mean().backward()
        return logits.detach(), [p.grad.clone() for p in trained]

    logits, grads = run()
    with lean_adalora(model) as n:
        assert n == 2 * 3
        lean_logits, lean_grads = run()
        with model.disable_adapter():
            off = model(input_ids=IDS).logits.detach()
    assert torch.allclose(lean_logits, logits, atol=1e-5)
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in zip(lean_grads, grads, strict=True))
    assert not torch.allclose(off, logits, atol=1e-3)  # the adapter counts, and switches off inside
    assert all("forward" not in m.__dict__ for m in model.modules())  # peft's forward again
    # Under autocast too (bf16 rounding in another order: close, not equal).
    with torch.no_grad():
        with lean_adalora(model):
            lean = bf16_logits(model)
        assert torch.allclose(lean, bf16_logits(model), atol=0.1)


# -- logits only where the loss reads them ----------------------------------------------------
def write(path: Path, pairs: list[tuple[str, str]], copies: int) -> Path:
    rows = [{"prompt": q, "response": a} for q, a in pairs] * copies
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    return path


def losses(tmp_path: Path, tokenizer, name: str, **extra) -> tuple[list[float], list[float]]:
    values = {
        "data.train_file": str(write(tmp_path / "fact.jsonl", [("Where is Veltmoor?", "By the sea.")], 4)),
        "data.replay_file": str(
            write(tmp_path / "replay.jsonl", [("Hello there, how are you?", "Fine, thanks. And you?")], 4)
        ),
        "model.template": "hf",
        "method.name": "adalora",
        "lora.dropout": 0.0,
        "training.output_dir": str(tmp_path / name),
        "training.max_steps": 4,
        "training.batch_size": 4,
        "training.learning_rate": 1e-1,
        "training.kl_to_base": 5.0,
        "training.replay_cross_entropy": "false",
        "training.progress_bar": "false",
        "training.plot": "false",
        "training.save_steps": 100,
        **extra,
    }
    train(build_config(values, "test"), make_model(tokenizer).train(), tokenizer)
    metrics = [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
    return [m["loss"] for m in metrics if "loss" in m], [m["kl_to_base"] for m in metrics if "kl_to_base" in m]


@pytest.mark.parametrize("bf16", ["false", "true"])
def test_training_with_the_speed_ups_follows_the_same_losses(tiny_tokenizer, tmp_path, monkeypatch, bf16):
    fast_loss, fast_kl = losses(tmp_path, tiny_tokenizer, "fast", **{"training.bf16": bf16})
    assert len(fast_loss) == 4 and max(fast_kl) > 1e-3  # the adapter moved, and the KL saw it

    from contextlib import nullcontext

    from chatforge.train import kl, trainer

    monkeypatch.setattr(kl.KLTrainer, "_logits_where_needed", lambda self, model: False)
    monkeypatch.setattr(trainer, "frozen_linears_in_bf16", lambda model: nullcontext(0))
    monkeypatch.setattr(trainer, "lean_adalora", lambda model: nullcontext(0))
    slow_loss, slow_kl = losses(tmp_path, tiny_tokenizer, "slow", **{"training.bf16": bf16})
    tolerance = 1e-4 if bf16 == "false" else 2e-2  # bf16 rounds AdaLoRA's sum in another order
    assert fast_loss == pytest.approx(slow_loss, rel=tolerance)
    assert fast_kl == pytest.approx(slow_kl, rel=10 * tolerance, abs=1e-6)
