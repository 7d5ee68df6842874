"""`accelerate launch` with two CPU processes (gloo) trains a tiny model: plain data
parallel, and with the weights sharded by FSDP2 or DeepSpeed ZeRO-3, where the saved adapter
or model must be the model as trained (about 15 s a run)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from sharded_cpu_train import PROBE_IDS  # noqa: E402
from tiny import make_model  # noqa: E402

import chatforge  # noqa: E402
from chatforge.train.checkpoints import CHECKPOINT_COMPLETE  # noqa: E402

ROOT = Path(__file__).parents[2]
SHARDED_TRAIN = Path(__file__).parents[1] / "support" / "sharded_cpu_train.py"


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


def launch_sharded(
    tmp_path: Path, tokenizer, method: str, accelerate_args: list[str]
) -> tuple[Path, Path, dict]:
    """Train a tiny model with ``method`` for 4 steps (checkpoints at 2 and 4) through
    ``sharded_cpu_train.py`` on two CPU processes; returns the base model's directory, the
    output directory and the trained model's probe (logits on ``PROBE_IDS``, how many
    parameters were sharded)."""
    base = tmp_path / "base"
    make_model(tokenizer).save_pretrained(base)
    tokenizer.save_pretrained(base)
    row = {"conversations": [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi!"}]}
    data = tmp_path / "train.jsonl"
    data.write_text("\n".join([json.dumps(row)] * 16))
    out, probe = tmp_path / "out", tmp_path / "probe.pt"
    config = tmp_path / "train.yaml"
    training = {
        "output_dir": str(out),
        "max_steps": 4,
        "save_steps": 2,
        "batch_size": 2,
        "learning_rate": 5e-3,
    }
    training |= {"bf16": "false", "plot": False, "progress_bar": False}
    settings = {
        "model": {"name_or_path": str(base), "dtype": "float32"},
        "data": {"train_file": str(data)},
        "method": {"name": method},
        "training": training,
    }
    config.write_text(yaml.safe_dump(settings))
    cmd = [sys.executable, "-m", "accelerate.commands.launch", *accelerate_args, str(SHARDED_TRAIN), str(config), str(probe)]  # fmt: skip
    src = str(Path(chatforge.__file__).parents[1])  # this chatforge, in the processes too
    path = os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": path}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("done: 4 steps") == 2  # both ranks finished
    return base, out, torch.load(probe)


def assert_saved_as_trained(base: Path, out: Path, probe: dict) -> None:
    """Every parameter was sharded when training ended, yet ``final/`` loads with plain peft
    (an adapter) or transformers (a model) and gives the logits of the model as trained."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    assert probe["sharded"] == probe["params"] > 0, "the weights were not sharded: nothing to gather"
    assert all((out / f"checkpoint-{step}" / CHECKPOINT_COMPLETE).exists() for step in (2, 4))
    ids = torch.tensor([PROBE_IDS])
    model = AutoModelForCausalLM.from_pretrained(base).eval()
    with torch.no_grad():
        before = model(input_ids=ids).logits
        if (out / "final" / "adapter_config.json").exists():
            trained = PeftModel.from_pretrained(model, out / "final")
        else:
            trained = AutoModelForCausalLM.from_pretrained(out / "final")
        after = trained.eval()(input_ids=ids).logits
    assert not torch.allclose(before, probe["logits"], atol=1e-3), "training changed nothing"
    torch.testing.assert_close(after, probe["logits"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", ["lora", "full"])
def test_fsdp_saves_the_gathered_weights(tiny_tokenizer, tmp_path, method):
    # The shipped FSDP config as it is, but for two CPU processes in float32.
    args = ["--config_file", str(ROOT / "examples/configs/fsdp.yaml"), "--num_processes", "2", "--mixed_precision", "no"]  # fmt: skip
    base, out, probe = launch_sharded(tmp_path, tiny_tokenizer, method, args)
    assert (out / "checkpoint-4" / "pytorch_model_fsdp_0").is_dir()  # checkpoints stay sharded
    assert_saved_as_trained(base, out, probe)


@pytest.mark.parametrize("method", ["lora", "full"])
def test_deepspeed_zero3_saves_the_gathered_weights(tiny_tokenizer, tmp_path, method):
    pytest.importorskip(
        "deepspeed", reason="DeepSpeed is not installed (DS_BUILD_OPS=0 pip install deepspeed)"
    )
    # examples/configs/deepspeed_zero3.yaml's settings, with every parameter partitioned:
    # by default ZeRO-3 keeps parameters under 100k elements (all of a tiny model's) whole.
    zero = {
        "stage": 3,
        "stage3_gather_16bit_weights_on_model_save": True,
        "stage3_param_persistence_threshold": 0,
    }
    auto = dict.fromkeys(
        ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "train_batch_size"), "auto"
    )
    (tmp_path / "zero3.json").write_text(
        json.dumps({"zero_optimization": zero, "gradient_clipping": 1.0, **auto})
    )
    launch = {
        "distributed_type": "DEEPSPEED",
        "deepspeed_config": {"deepspeed_config_file": str(tmp_path / "zero3.json"), "zero3_init_flag": True},
        "num_machines": 1,
        "num_processes": 2,
    }
    (tmp_path / "accelerate.yaml").write_text(yaml.safe_dump(launch))
    args = ["--config_file", str(tmp_path / "accelerate.yaml")]
    base, out, probe = launch_sharded(tmp_path, tiny_tokenizer, method, args)
    assert_saved_as_trained(base, out, probe)
