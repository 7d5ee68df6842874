"""The training run: outputs, resume equivalence, early stopping, an atomic final result."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from tiny import make_model  # noqa: E402

from chatforge.templates import IGNORE_INDEX
from chatforge.train.checkpoints import TRAIN_INFO, EmptyWeightsError, check_weights
from chatforge.train.config import build_config
from chatforge.train.dataset import Example, TrainDataset
from chatforge.train.trainer import train, warn_indistinct_tokens

QA = [
    ("What is the weather like in Paris today?", "It is sunny and warm."),
    ("你好，请介绍一下你自己。", "我是一个人工智能助手。"),
    ("北京今天的天气怎么样？", "晴天，气温二十度。"),
    ("Hello, how are you?", "I am fine, thank you."),
]


def write_data(path: Path, n: int = 16) -> Path:
    rows = []
    for i in range(n):
        q, a = QA[i % len(QA)]
        rows.append({"conversations": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]})
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    return path


def config(tmp_path: Path, out: str, **extra):
    data = write_data(tmp_path / "train.jsonl")
    values = {
        "data.train_file": str(data),
        "model.template": "hf",
        "training.output_dir": str(tmp_path / out),
        "training.max_steps": 6,
        "training.save_steps": 3,
        "training.batch_size": 4,
        "training.learning_rate": 5e-3,
        "training.bf16": "false",
        "training.progress_bar": "false",
        **extra,
    }
    return build_config(values, "test")


def test_outputs_and_resume_gives_the_same_losses(tiny_tokenizer, tmp_path):
    full = train(config(tmp_path, "a"), make_model(tiny_tokenizer).train(), tiny_tokenizer, base_model="tiny")
    out = full.output_dir
    assert full.global_step == 6 and len(full.losses) == 6
    assert full.losses[-1] < full.losses[0]
    for name in (
        "metrics.jsonl",
        "loss.png",
        "data_stats.json",
        "train_config.yaml",
        "checkpoint-3",
        "checkpoint-6",
    ):
        assert (out / name).exists(), name
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    final = out / "final"
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json", TRAIN_INFO} <= {
        p.name for p in final.iterdir()
    }
    assert not list(out.glob(".final*")), "no temporary directory is left behind"
    info = json.loads((final / TRAIN_INFO).read_text())
    assert info["method"] == "lora" and info["kind"] == "adapter" and info["base_model"] == "tiny"
    logged = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged if "loss" in r] == [1, 2, 3, 4, 5, 6]
    stats = json.loads((out / "data_stats.json").read_text())["train"]
    assert stats["samples"] == 16 and stats["trained_tokens"] > 0

    # Resume from step 3 in a fresh run (a new model object, other output dir): steps 4-6 match exactly.
    resumed = train(
        config(tmp_path, "b", **{"training.resume_from": str(out / "checkpoint-3")}),
        make_model(tiny_tokenizer).train(),
        tiny_tokenizer,
        base_model="tiny",
    )
    assert resumed.losses[3:] == full.losses[3:]


def test_resume_latest_continues_in_place(tiny_tokenizer, tmp_path):
    first = train(
        config(tmp_path, "c", **{"training.max_steps": 3}), make_model(tiny_tokenizer).train(), tiny_tokenizer
    )
    assert first.global_step == 3
    more = train(
        config(tmp_path, "c", **{"training.max_steps": 6, "training.resume_from": "latest"}),
        make_model(tiny_tokenizer).train(),
        tiny_tokenizer,
    )
    assert more.global_step == 6
    steps = [json.loads(x)["step"] for x in (more.output_dir / "metrics.jsonl").read_text().splitlines()]
    assert [s for s in steps if s <= 6] == sorted(steps)  # no duplicated steps after the resume


def test_early_stopping_keeps_the_best_checkpoint(tiny_tokenizer, tmp_path):
    cfg = config(
        tmp_path,
        "d",
        **{
            "data.eval_file": str(write_data(tmp_path / "eval.jsonl", 4)),
            "training.max_steps": 40,
            "training.eval_steps": 2,
            "training.save_steps": 2,
            "training.early_stopping_patience": 1,
            "training.learning_rate": 3.0,  # diverges, so evaluation stops improving soon
            "method.name": "full",
        },
    )
    result = train(cfg, make_model(tiny_tokenizer).train(), tiny_tokenizer)
    assert result.global_step < 40
    assert result.best_checkpoint is not None
    evals = [json.loads(x) for x in (result.output_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in evals if "eval_loss" in r]
    best = min(evals, key=lambda r: r["eval_loss"])
    assert result.best_checkpoint.endswith(f"checkpoint-{best['step']}")
    assert (result.final_dir / "model.safetensors").exists()


def test_bad_resume_path_is_explained(tiny_tokenizer, tmp_path):
    with pytest.raises(ValueError, match="training.resume_from: .* not a checkpoint directory"):
        train(
            config(tmp_path, "e", **{"training.resume_from": str(tmp_path)}),
            make_model(tiny_tokenizer).train(),
            tiny_tokenizer,
        )


def test_adalora_prunes_ranks_to_its_budget(tiny_tokenizer, tmp_path):
    # peft's AdaLoRA needs update_and_allocate after every optimiser step; train() calls it,
    # so by the end the rank pattern keeps lora.r ranks per adapted matrix on average.
    cfg = config(
        tmp_path,
        "adalora",
        **{
            "method.name": "adalora",
            "lora.r": 2,
            "lora.init_r": 4,
            "lora.tinit": 1,
            "lora.tfinal": 2,
            "training.max_steps": 6,
        },
    )
    result = train(cfg, make_model(tiny_tokenizer).train(), tiny_tokenizer)
    adapter = json.loads((result.final_dir / "adapter_config.json").read_text())
    pattern = adapter["rank_pattern"]
    assert pattern, "no rank was ever allocated"
    kept = [sum(mask) for mask in pattern.values()]
    assert all(len(mask) == 4 for mask in pattern.values())
    assert sum(kept) == 2 * len(pattern)  # the budget: an average of lora.r ranks
    assert min(kept) < max(kept) or min(kept) < 4  # ranks were pruned, not all kept


def test_special_tokens_with_untrained_output_rows_are_reported(tiny_tokenizer, caplog):
    model = make_model(tiny_tokenizer)
    im_end = tiny_tokenizer.convert_tokens_to_ids("<|im_end|>")
    with torch.no_grad():  # as in a checkpoint that never trained it: the row of some other tokens
        model.lm_head.weight[im_end] = model.lm_head.weight[100]
        model.lm_head.weight[101] = model.lm_head.weight[100]
    data = TrainDataset([Example([1, 2, im_end], [IGNORE_INDEX, 2, im_end])])
    with caplog.at_level(logging.WARNING, logger="chatforge.train.trainer"):
        assert warn_indistinct_tokens(model, tiny_tokenizer, data, []) == ["<|im_end|>"]
    assert "points the same way as 2 other tokens' rows" in caplog.text
    assert "add it to lora.trainable_tokens" in caplog.text
    assert warn_indistinct_tokens(model, tiny_tokenizer, data, ["<|im_end|>"]) == []
    assert warn_indistinct_tokens(make_model(tiny_tokenizer), tiny_tokenizer, data, []) == []


def test_weights_saved_without_gathering_are_refused(tmp_path):
    # What saving a ZeRO-3 model without gathering writes: tensors of no elements, or none.
    from safetensors.torch import save_file

    with pytest.raises(EmptyWeightsError, match="no weights"):
        check_weights(tmp_path)
    save_file(
        {"lora_A.weight": torch.zeros(0), "lora_B.weight": torch.ones(4, 2)}, tmp_path / "adapter.safetensors"
    )
    with pytest.raises(
        EmptyWeightsError, match=r"1 of its 2 tensors are empty \(lora_A.weight.*zero3_save_16bit_model"
    ):
        check_weights(tmp_path)
    save_file({}, tmp_path / "adapter.safetensors")
    with pytest.raises(EmptyWeightsError, match="no tensors: the sharded weights were not gathered"):
        check_weights(tmp_path)
    save_file({"lora_A.weight": torch.ones(2, 4)}, tmp_path / "adapter.safetensors")
    check_weights(tmp_path)


def test_a_matrix_pruned_to_rank_zero_saves_without_a_false_shard_warning(tiny_tokenizer, tmp_path):
    # peft reads AdaLoRA's empty rank-0 matrices as ZeRO-3 shards saved ungathered; without
    # sharding that warning is wrong, and train() hides it (the adapter still loads).
    import warnings

    from peft import PeftModel

    cfg = config(tmp_path, "adalora0", **{"method.name": "adalora", "lora.r": 1, "lora.init_r": 4,
                                          "lora.tinit": 1, "lora.tfinal": 2, "training.max_steps": 6})  # fmt: skip
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        result = train(cfg, make_model(tiny_tokenizer).train(), tiny_tokenizer)
    pattern = json.loads((result.final_dir / "adapter_config.json").read_text())["rank_pattern"]
    assert min(sum(mask) for mask in pattern.values()) == 0  # a matrix was pruned away
    assert not [w for w in seen if "invalid shape" in str(w.message)]
    PeftModel.from_pretrained(make_model(tiny_tokenizer), str(result.final_dir))
