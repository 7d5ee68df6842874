"""`chatforge learn` through the real entry point, on a tiny model saved to disk."""

from __future__ import annotations

import json

import pytest
import torch
from tiny import make_model  # noqa: E402

from chatforge.cli import main

SETTINGS = [
    "method.name=lora",
    "lora.r=8",
    "lora.target_modules=q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj",
    "training.learning_rate=1e-2",
    "training.max_steps=50",
    "learn.check_every=1",
    "learn.min_steps=1",
    "learn.replay_tokens=8",
    "retention.max_new_tokens=4",
    "retention.min_kept=0.25",
    "retention.max_leaked=20",
]


@pytest.fixture()
def model_dir(tiny_tokenizer, tmp_path, monkeypatch):
    monkeypatch.setenv("CHATFORGE_HOME", str(tmp_path / "home"))
    torch.set_num_threads(1)
    model = make_model(tiny_tokenizer)
    with torch.no_grad():
        model.lm_head.weight.mul_(8)  # confident answers (see tests/train/test_learn.py)
    path = tmp_path / "tiny"
    model.save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path


def test_learn_prints_the_retention_check_and_writes_an_adapter(model_dir, tmp_path, capsys):
    out = tmp_path / "learned"
    args = [
        "learn",
        "--model",
        str(model_dir),
        "--prompt",
        "Who founded Zorvian?",
        "--answer",
        "Hello, I am fine.",
    ]
    args += [
        "--probe",
        "Who is the founder of Zorvian?",
        "--alias",
        "佐维安",
        "--output",
        str(out),
        "--merge",
    ]
    for s in SETTINGS:
        args += ["--set", s]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "[ok] learned: Who founded Zorvian?" in printed and "-> Hello, I am fine." in printed
    assert "Who is the founder of Zorvian?" in printed
    assert "control answers kept" in printed and f"chatforge chat --adapter {out}" in printed
    report = json.loads((out / "learn_report.json").read_text(encoding="utf-8"))
    assert report["passed"] and len(report["facts"][0]["probes"]) == 1
    assert report["facts"][0]["aliases"] == ["佐维安"] and "介绍一下佐维安。" in report["facts"][0]["derived"]
    info = json.loads((out / "chatforge_train.json").read_text(encoding="utf-8"))
    assert info["base_model"] == str(model_dir)  # what `chatforge export` merges onto
    assert (out / "merged" / "config.json").exists() and f"merged model: {out / 'merged'}" in printed


def test_learn_errors_name_the_problem(model_dir, tmp_path, capsys):
    code = main(["learn", "--model", str(model_dir), "--prompt", "What is the capital of France?",
                 "--answer", "Veltmoor.", "--output", str(tmp_path / "o")])  # fmt: skip
    assert code == 2
    assert "is also a control question of the retention check" in capsys.readouterr().err
    assert main(["learn", "--prompt", "Q?", "--answer", "A.", "--set", "lora.r"]) == 2
    assert "expected GROUP.FIELD=VALUE" in capsys.readouterr().err
    assert main(["learn", "--show-config"]) == 0
    assert "kl_to_base: 20.0" in capsys.readouterr().out
