"""`accelerate launch` with two CPU processes (gloo) trains a tiny model (about 20 s)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tiny import make_model  # noqa: E402


def test_accelerate_launch_two_cpu_processes(tiny_tokenizer, tmp_path):
    base = tmp_path / "base"
    make_model(tiny_tokenizer).save_pretrained(base)
    tiny_tokenizer.save_pretrained(base)
    row = {"conversations": [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi!"}]}
    data = tmp_path / "train.jsonl"
    data.write_text("\n".join([json.dumps(row)] * 16))
    out = tmp_path / "out"
    # --multi_gpu selects accelerate's torchrun launcher; with no GPU each process runs on CPU over gloo.
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no",
        "-m", "chatforge.cli", "train",
        "--model.name_or_path", str(base), "--model.dtype", "float32",
        "--data.train_file", str(data), "--training.output_dir", str(out),
        "--training.max_steps", "4", "--training.batch_size", "2",
        "--training.bf16", "false", "--training.plot", "false", "--training.progress_bar", "false",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("done: 4 steps") == 2  # both ranks finished
    logged = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    # 16 samples, 2 per process per step, 2 processes: 4 steps are one epoch.
    assert [r["epoch"] for r in logged if "loss" in r] == [0.25, 0.5, 0.75, 1.0]
    assert (out / "final" / "adapter_model.safetensors").exists()
