"""Fine-tuning faults: a SIGKILLed `chatforge train` resumes to the same adapter, resume
skips checkpoints whose save was interrupted, and a bad output location fails before the
model is loaded."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from tiny import make_model  # noqa: E402

from chatforge.train import checkpoints  # noqa: E402
from chatforge.train import trainer as trainer_module  # noqa: E402
from chatforge.train.checkpoints import CHECKPOINT_COMPLETE, OutputDirError  # noqa: E402
from chatforge.train.config import build_config  # noqa: E402
from chatforge.train.trainer import train  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
QA = [
    ("What is the weather like in Paris today?", "It is sunny and warm. " * 6),
    ("你好，请介绍一下你自己。", "我是一个人工智能助手。" * 6),
    ("北京今天的天气怎么样？", "晴天，气温二十度。" * 6),
    ("Hello, how are you?", "I am fine, thank you. " * 6),
]
STEPS = 8


def write_data(path: Path, n: int) -> Path:
    rows = []
    for i in range(n):
        q, a = QA[i % len(QA)]
        turns = [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        rows.append({"conversations": turns})
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """In-process training of a tiny model is faster on one thread (as in tests/train)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    path = tmp_path_factory.mktemp("faults") / "tiny"
    make_model(tiny_tokenizer).save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path


def yaml_config(tmp_path: Path, model_dir: Path, out: Path) -> Path:
    config = {
        "model": {"name_or_path": str(model_dir), "template": "hf", "dtype": "float32", "device": "cpu"},
        "data": {"train_file": str(write_data(tmp_path / "train.jsonl", 64))},
        "training": {
            "output_dir": str(out),
            "seed": 7,
            "max_steps": STEPS,
            "save_steps": 2,
            "save_total_limit": 3,
            "batch_size": 8,
            "learning_rate": 5e-3,
            "bf16": "false",
            "progress_bar": False,
            "plot": False,
        },
    }
    path = tmp_path / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def cli(config: Path, *extra: str, log: Path) -> subprocess.Popen:
    # One thread in every run, so the reference and the resumed run do the same float work.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "chatforge.cli", "train", str(config), *extra]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)


def finish(proc: subprocess.Popen, log: Path) -> None:
    assert proc.wait(120) == 0, log.read_text(errors="replace")[-3000:]


def adapter(out: Path) -> dict[str, torch.Tensor]:
    return load_file(out / "final" / "adapter_model.safetensors")


def test_sigkill_then_resume_latest_matches_an_uninterrupted_run(tmp_path, model_dir):
    ref_out, run_out = tmp_path / "reference", tmp_path / "killed"
    # Start the reference and the run to be killed together: the two cores are shared.
    ref = cli(yaml_config(tmp_path, model_dir, ref_out), log=tmp_path / "reference.log")
    victim_log = tmp_path / "killed.log"
    config = yaml_config(tmp_path, model_dir, run_out)
    victim = cli(config, log=victim_log)
    deadline = time.monotonic() + 90
    while not list(run_out.glob(f"checkpoint-*/{CHECKPOINT_COMPLETE}")):
        assert victim.poll() is None, victim_log.read_text(errors="replace")[-3000:]
        assert time.monotonic() < deadline, "no checkpoint within 90 s"
        time.sleep(0.005)
    victim.send_signal(signal.SIGKILL)
    assert victim.wait(30) == -signal.SIGKILL
    assert not (run_out / "final").exists(), "the kill landed before the run finished"

    resume_log = tmp_path / "resumed.log"
    finish(cli(config, "--training.resume_from", "latest", log=resume_log), resume_log)
    finish(ref, tmp_path / "reference.log")
    text = resume_log.read_text(errors="replace")
    assert "resuming from" in text and f"done: {STEPS} steps" in text

    expected, got = adapter(ref_out), adapter(run_out)
    assert expected.keys() == got.keys() and expected
    for name, tensor in expected.items():
        assert torch.equal(tensor, got[name]), name  # bit-for-bit, not merely close
    # metrics.jsonl was rewound at the resume: each step logged once.
    rows = [json.loads(x) for x in (run_out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == list(range(1, STEPS + 1))


def small_config(tmp_path: Path, out: Path, **extra):
    values = {
        "data.train_file": str(write_data(tmp_path / "small.jsonl", 16)),
        "model.template": "hf",
        "training.output_dir": str(out),
        "training.batch_size": 4,
        "training.bf16": "false",
        "training.progress_bar": "false",
        "training.plot": "false",
        **extra,
    }
    return build_config(values, "test")


def test_resume_latest_skips_a_partial_checkpoint(tmp_path, tiny_tokenizer, caplog):
    out = tmp_path / "run"
    cfg = {"training.max_steps": 4, "training.save_steps": 2, "training.save_total_limit": 0}
    train(small_config(tmp_path, out, **cfg), make_model(tiny_tokenizer).train(), tiny_tokenizer)
    assert (out / "checkpoint-4" / CHECKPOINT_COMPLETE).exists()
    # A save killed halfway: a higher step, truncated files, no marker.
    partial = out / "checkpoint-9"
    shutil.copytree(out / "checkpoint-4", partial)
    (partial / CHECKPOINT_COMPLETE).unlink()
    for name in ("adapter_model.safetensors", "optimizer.pt", "trainer_state.json"):
        data = (partial / name).read_bytes()
        (partial / name).write_bytes(data[: len(data) // 3])

    caplog.set_level(logging.INFO, logger="chatforge.train")
    more = {**cfg, "training.max_steps": 6, "training.resume_from": "latest"}
    result = train(small_config(tmp_path, out, **more), make_model(tiny_tokenizer).train(), tiny_tokenizer)
    assert result.global_step == 6
    assert f"skipping incomplete checkpoint {partial}" in caplog.text
    assert f"resuming from {out / 'checkpoint-4'}" in caplog.text
    assert (out / "checkpoint-6" / CHECKPOINT_COMPLETE).exists()
    # The abandoned step-9 checkpoint stays unmarked; the next "latest" is checkpoint-6.
    assert checkpoints.last_complete_checkpoint(out) == out / "checkpoint-6"


def test_checkpoints_past_the_resume_step_are_unmarked(tmp_path, tiny_tokenizer):
    # Resuming in place from an earlier checkpoint rewrites the later ones: they must not
    # keep a stale "complete" marker while that happens.
    out = tmp_path / "run"
    cfg = {"training.max_steps": 4, "training.save_steps": 2, "training.save_total_limit": 0}
    train(small_config(tmp_path, out, **cfg), make_model(tiny_tokenizer).train(), tiny_tokenizer)
    stop = {**cfg, "training.resume_from": str(out / "checkpoint-2")}
    seen: dict[str, bool] = {}

    class Peek(trainer_module.TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            seen.setdefault("marked", (out / "checkpoint-4" / CHECKPOINT_COMPLETE).exists())

    train(
        small_config(tmp_path, out, **stop),
        make_model(tiny_tokenizer).train(),
        tiny_tokenizer,
        callbacks=[Peek()],
    )
    assert seen == {"marked": False}
    assert (out / "checkpoint-4" / CHECKPOINT_COMPLETE).exists()  # re-marked once saved again


def test_legacy_checkpoints_without_markers_still_resume(tmp_path, caplog):
    out = tmp_path / "old"
    (out / "checkpoint-3").mkdir(parents=True)
    (out / "checkpoint-3" / "trainer_state.json").write_text("{}")
    (out / "checkpoint-5").mkdir()
    (out / "checkpoint-5" / "trainer_state.json").write_text('{"glob')  # torn write
    assert checkpoints.last_complete_checkpoint(out) == out / "checkpoint-3"
    assert "skipping incomplete checkpoint" in caplog.text


def test_unwritable_output_dir_fails_before_loading(tmp_path, monkeypatch):
    blocker = tmp_path / "file.txt"
    blocker.write_text("a regular file, so nothing can be created below it, even by root")
    out = blocker / "out"
    loaded = []
    monkeypatch.setattr(trainer_module, "load_for_training", lambda c: loaded.append(c))
    with pytest.raises(OutputDirError, match=f"training.output_dir {out} is not writable"):
        train(small_config(tmp_path, out, **{"training.max_steps": 1}))
    assert not loaded


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs /proc")
def test_existing_directory_that_refuses_files_fails(tmp_path):
    # /proc/self exists and is a directory, but no one (root included) can create files in it:
    # the probe write, not mkdir, is what fails here.
    with pytest.raises(OutputDirError, match="training.output_dir /proc/self is not writable"):
        checkpoints.check_output_dir(Path("/proc/self"), 0)


def test_full_disk_fails_with_the_numbers(tmp_path, monkeypatch):
    out = tmp_path / "out"
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage._replace(free=200 << 20))
    monkeypatch.setattr(trainer_module, "load_for_training", lambda c: pytest.fail("loaded the model"))
    with pytest.raises(OutputDirError, match=rf"{out}: only 0\.20 GiB free, this run needs about 1\.00 GiB"):
        train(small_config(tmp_path, out, **{"training.max_steps": 1}))
    # With less needed than is free, the check passes and leaves nothing behind.
    checkpoints.check_output_dir(out, 100 << 20)
    assert not list(out.glob(".chatforge-write-probe*")), "the probe file is removed"


def test_full_fine_tune_needs_room_for_its_checkpoints():
    cfg = build_config({"data.train_file": "x.jsonl", "method.name": "full", "training.save_total_limit": 2})
    model_bytes = 4 * (1 << 30)
    assert checkpoints.required_space(cfg, model_bytes) == model_bytes * 7
    lora = build_config({"data.train_file": "x.jsonl"})
    assert checkpoints.required_space(lora, model_bytes) == 1 << 30
