"""KL-to-base: the divergence itself, its masks through data and collation, and training with it."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from tiny import make_model  # noqa: E402
from transformers import TrainerCallback

from chatforge.messages import Message, Role
from chatforge.templates import IGNORE_INDEX, get_template
from chatforge.train.config import ConfigError, build_config
from chatforge.train.data import Sample
from chatforge.train.dataset import Collator, Example, TrainDataset, encode_samples, pack
from chatforge.train.kl import kl_divergence, masked_kl
from chatforge.train.trainer import train

REPLAY = [
    ("Hello, how are you?", "I am fine, thank you."),
    (
        "What is the weather like in Paris today?",
        "It is sunny and warm. The quick brown fox jumps over the lazy dog.",
    ),
]
FACT = [("你好，请介绍一下你自己。", "北京今天的天气怎么样？晴天，气温二十度。")]


# -- the divergence ---------------------------------------------------------------------
def test_kl_is_zero_for_equal_distributions_and_follows_the_formula():
    base = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.5]])
    assert kl_divergence(base.clone(), base).item() == 0.0
    assert kl_divergence(base + 3.0, base).item() == pytest.approx(0.0, abs=1e-6)  # shift-invariant

    tuned = torch.tensor([[0.0, 0.0, 0.0], [0.5, 0.5, 0.5]])
    p = torch.softmax(base[0], -1).tolist()
    expected = sum(pi * math.log(pi / (1 / 3)) for pi in p) / 2  # batchmean over 2 positions
    assert kl_divergence(tuned, base).item() == pytest.approx(expected, rel=1e-6)
    # KL(base ‖ tuned), not the reverse
    reverse = sum((1 / 3) * math.log((1 / 3) / pi) for pi in p) / 2
    assert kl_divergence(base, tuned).item() == pytest.approx(reverse, rel=1e-6)
    assert expected != pytest.approx(reverse, rel=1e-3)


def test_kl_of_no_positions_is_zero_with_a_graph():
    logits = torch.zeros(0, 5, requires_grad=True)
    kl = kl_divergence(logits, torch.zeros(0, 5))
    assert kl.item() == 0.0 and kl.requires_grad


def test_masked_kl_uses_the_positions_that_predict_the_masked_tokens():
    base = torch.zeros(1, 4, 3)
    tuned = base.clone()
    tuned[0, 1] = torch.tensor([5.0, 0.0, 0.0])  # position 1 predicts token 2
    assert masked_kl(tuned, base, torch.tensor([[0, 0, 1, 0]])).item() > 0.5
    assert masked_kl(tuned, base, torch.tensor([[0, 1, 0, 1]])).item() == 0.0
    with pytest.raises(ValueError, match="differ"):
        kl_divergence(torch.zeros(2, 3), torch.zeros(2, 4))


# -- masks through examples, packing and collation -----------------------------------------
def test_replay_example_masks_its_trained_tokens():
    ex = Example([1, 2, 3, 4], [IGNORE_INDEX, IGNORE_INDEX, 3, 4], "r:1")
    with_ce = ex.as_replay()
    assert with_ce.kl_mask == [0, 0, 1, 1] and with_ce.labels == ex.labels
    kl_only = ex.as_replay(cross_entropy=False)
    assert kl_only.kl_mask == [0, 0, 1, 1] and kl_only.labels == [IGNORE_INDEX] * 4
    assert ex.kl_mask == []  # the original is left alone


def test_dataset_and_collator_carry_the_kl_mask():
    plain = Example([5, 6, 7], [IGNORE_INDEX, 6, 7])
    replay = Example([1, 2, 3, 4], [IGNORE_INDEX, IGNORE_INDEX, 3, 4]).as_replay()
    collate = Collator(pad_id=0)
    assert "kl_mask" not in collate([TrainDataset([plain])[0]])
    batch = collate([TrainDataset([plain, replay])[i] for i in range(2)])
    assert batch["kl_mask"].dtype == torch.bool
    assert batch["kl_mask"].tolist() == [[False] * 4, [False, False, True, True]]

    rows = pack([replay, plain, replay], max_length=16)
    assert len(rows) == 1
    assert rows[0].kl_mask == [0, 0, 1, 1] + [0, 0, 0] + [0, 0, 1, 1]
    assert TrainDataset(rows)[0]["kl_mask"] == rows[0].kl_mask


# -- configuration ---------------------------------------------------------------------
def test_kl_to_base_needs_replay_data_and_an_adapter():
    with pytest.raises(ConfigError, match="training.kl_to_base needs data.replay_file"):
        build_config({"data.train_file": "t.jsonl", "training.kl_to_base": 1.0})
    with pytest.raises(ConfigError, match="training.kl_to_base needs an adapter method"):
        build_config(
            {
                "data.train_file": "t.jsonl",
                "data.replay_file": "r.jsonl",
                "training.kl_to_base": 1.0,
                "method.name": "full",
            }
        )
    with pytest.raises(ConfigError, match="training.kl_to_base must be >= 0"):
        build_config({"data.train_file": "t.jsonl", "data.replay_file": "r.jsonl", "training.kl_to_base": -1})


# -- training ------------------------------------------------------------------------------
def write(path: Path, pairs: list[tuple[str, str]], copies: int = 1) -> Path:
    rows = [{"prompt": q, "response": a} for q, a in pairs] * copies
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    return path


class KeepModel(TrainerCallback):
    """Holds on to the trained (PEFT) model, which ``train`` does not return."""

    model = None

    def on_train_end(self, args, state, control, model=None, **kw):
        self.model = model


def replay_divergence(tokenizer, peft_model) -> float:
    """KL(base ‖ tuned) over the replayed answers' tokens after training."""
    template = get_template("hf", tokenizer)
    samples = [Sample([Message(Role.USER, q), Message(Role.ASSISTANT, a)]) for q, a in REPLAY]
    examples, _ = encode_samples(samples, template, 128)
    batch = Collator(pad_id=tokenizer.pad_token_id)([TrainDataset([e.as_replay()])[0] for e in examples])
    mask = batch.pop("kl_mask")
    batch.pop("labels")
    peft_model.eval()
    with torch.no_grad():
        tuned = peft_model(**batch).logits
        with peft_model.disable_adapter():
            base = peft_model(**batch).logits
    return masked_kl(tuned, base, mask).item()


def run(tmp_path: Path, tokenizer, name: str, **extra) -> tuple[float, list[dict]]:
    """Train LoRA on one fact plus replay; the replay KL after training and the logged metrics."""
    values = {
        "data.train_file": str(write(tmp_path / "fact.jsonl", FACT, copies=4)),
        "data.replay_file": str(write(tmp_path / "replay.jsonl", REPLAY, copies=2)),
        "model.template": "hf",
        "lora.dropout": 0.0,
        "training.output_dir": str(tmp_path / name),
        "training.max_steps": 8,
        "training.batch_size": 4,
        "training.learning_rate": 2e-2,
        "training.bf16": "false",
        "training.progress_bar": "false",
        "training.plot": "false",
        "training.save_steps": 100,
        **extra,
    }
    keep = KeepModel()
    train(build_config(values, "test"), make_model(tokenizer).train(), tokenizer, callbacks=[keep])
    metrics = [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
    return replay_divergence(tokenizer, keep.model), metrics


def test_kl_to_base_keeps_the_model_close_to_the_base_on_replayed_answers(tiny_tokenizer, tmp_path):
    # The replayed answers train by the KL term alone, so a negligible weight is training on the fact only.
    kl_only = {"training.replay_cross_entropy": "false", "training.learning_rate": 5e-3}
    kl_off, metrics_off = run(tmp_path, tiny_tokenizer, "off", **kl_only, **{"training.kl_to_base": 1e-6})
    kl_on, metrics_on = run(tmp_path, tiny_tokenizer, "kl", **kl_only, **{"training.kl_to_base": 20.0})
    assert kl_on < kl_off / 4, (kl_on, kl_off)
    logged = [m["kl_to_base"] for m in metrics_on if "kl_to_base" in m]
    assert len(logged) == 8 and logged[0] == 0.0  # LoRA starts as the identity: no divergence at step 1
    for metrics in (metrics_off, metrics_on):  # the fact is learned either way
        losses = [m["loss"] for m in metrics if "loss" in m]
        assert losses[-1] < losses[0] - 0.5, losses
    stats = json.loads((tmp_path / "kl" / "data_stats.json").read_text())["train"]
    assert stats["samples"] == 4 and stats["replay"]["samples"] == 4 and stats["rows"] == 8


def test_replay_trained_by_kl_alone_survives_batches_without_cross_entropy(tiny_tokenizer, tmp_path):
    # One sample per batch: most batches hold only replay rows, whose labels are all masked.
    _, metrics = run(
        tmp_path,
        tiny_tokenizer,
        "kl_only",
        **{"training.kl_to_base": 1.0, "training.replay_cross_entropy": "false", "training.batch_size": 1},
    )
    losses = [m["loss"] for m in metrics if "loss" in m]
    assert len(losses) == 8 and all(math.isfinite(x) for x in losses)
    kls = [m["kl_to_base"] for m in metrics if "kl_to_base" in m]
    assert kls and all(math.isfinite(x) for x in kls)


def test_kl_with_gradient_accumulation_weighs_micro_batches_like_one_batch(tiny_tokenizer, tmp_path):
    # The same rows as batches of 4, or as 2 accumulated micro-batches of 2, whose replay
    # tokens differ in number: the KL is a mean over the accumulated batch's replay tokens,
    # so losses and updates agree (a mean of micro-batch means would not).
    extra = {"training.kl_to_base": 5.0, "training.max_steps": 3}
    one = run(tmp_path, tiny_tokenizer, "b4", **extra)[1]
    two = run(
        tmp_path,
        tiny_tokenizer,
        "b2x2",
        **extra,
        **{"training.batch_size": 2, "training.gradient_accumulation_steps": 2},
    )[1]
    loss_one = [m["loss"] for m in one if "loss" in m]
    loss_two = [m["loss"] for m in two if "loss" in m]
    assert any(m.get("kl_to_base", 0) > 1e-4 for m in one)
    assert loss_two == pytest.approx(loss_one, rel=1e-4)


def test_replay_rows_are_spread_evenly_over_the_batches():
    from chatforge.train.kl import EvenReplay

    replay = [False] * 48 + [True] * 70  # chatforge learn's mix: 48 fact rows, 70 replayed
    sampler = EvenReplay(replay, batch_size=8, seed=3)
    first, second = list(sampler), list(sampler)
    assert sorted(first) == sorted(second) == list(range(118)) and first != second  # a new order per epoch
    sampler.set_epoch(1)  # as a resumed run's Trainer does
    assert list(sampler) == second
    for order in (first, second):
        own = [sum(not replay[i] for i in order[b : b + 8]) for b in range(0, 118, 8)]
        assert set(own[:-1]) <= {3, 4} and own[-1] == 2 and sum(own) == 48  # 48/118 of 8 is 3.25
    lopsided = EvenReplay([True] * 3 + [False] * 10, batch_size=4, seed=0)
    order = list(lopsided)
    assert sorted(order) == list(range(13))
    assert [sum(i < 3 for i in order[b : b + 4]) for b in range(0, 13, 4)] == [1, 1, 1, 0]
