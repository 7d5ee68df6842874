"""Where a run's results live on disk: the output directory (writable, roomy enough),
``checkpoint-N/`` marked complete once saved, the checkpoint to resume from, and
``final/`` written whole (gathered from every process) or not at all.

The Trainer writes ``checkpoint-N/`` in place, so a run killed mid-save leaves a partial
directory. :class:`CheckpointMarker` writes ``CHECKPOINT_COMPLETE`` into a checkpoint once
the Trainer has finished saving it (files fsynced first), and ``resume_from: latest`` takes
the newest checkpoint that has it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from safetensors import safe_open
from transformers import TrainerCallback

from chatforge.train.config import TrainConfig
from chatforge.train.methods import is_peft

log = logging.getLogger(__name__)

TRAIN_INFO = "chatforge_train.json"
CHECKPOINT_COMPLETE = "chatforge_checkpoint_complete.json"
TRAINING_ARGS = "training_args.bin"  # written by Trainer.save_model
_CHECKPOINT_NAME = re.compile(r"^checkpoint-(\d+)$")
GIB = 1 << 30


class OutputDirError(RuntimeError):
    """The output directory cannot be written, or its disk is too full to hold the run."""


class EmptyWeightsError(RuntimeError):
    """The final result's weights are missing or empty (sharded weights saved ungathered)."""


class CheckpointMarker(TrainerCallback):
    """Marks each checkpoint complete once the Trainer has saved it (``on_save`` runs after
    the weights, optimiser, scheduler, RNG and trainer state are written)."""

    def __init__(self, output_dir: Path) -> None:
        self.output_dir = output_dir

    def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if not state.is_world_process_zero:
            return
        # Checkpoints past the step we start from belong to an abandoned run and will be
        # rewritten in place: unmark them so a kill during that rewrite cannot look complete.
        for step, path in _checkpoints(self.output_dir):
            if step > state.global_step and (path / CHECKPOINT_COMPLETE).exists():
                (path / CHECKPOINT_COMPLETE).unlink()
                log.info("%s is ahead of step %d; no longer marked complete", path, state.global_step)

    def on_save(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if not state.is_world_process_zero:
            return
        path = self.output_dir / f"checkpoint-{state.global_step}"
        if path.is_dir():
            mark_complete(path, state.global_step)


def mark_complete(checkpoint: Path, step: int) -> None:
    """fsync the checkpoint's files, then write the marker atomically (write + rename)."""
    for file in checkpoint.rglob("*"):
        if file.is_file():
            _fsync(file)
    tmp = checkpoint / f".{CHECKPOINT_COMPLETE}.tmp"
    tmp.write_text(json.dumps({"step": step}), encoding="utf-8")
    _fsync(tmp)
    tmp.replace(checkpoint / CHECKPOINT_COMPLETE)
    _fsync(checkpoint)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _checkpoints(out: Path) -> list[tuple[int, Path]]:
    """``(step, path)`` of every ``checkpoint-N`` directory in ``out``, newest step first."""
    if not out.is_dir():
        return []
    found = [
        (int(m.group(1)), p) for p in out.iterdir() if (m := _CHECKPOINT_NAME.match(p.name)) and p.is_dir()
    ]
    return sorted(found, reverse=True)


def last_complete_checkpoint(out: Path) -> Path | None:
    """The newest checkpoint marked complete; newer unmarked ones are skipped with a warning.

    Output directories written before markers existed have none at all: there a checkpoint
    counts as complete when its ``trainer_state.json`` (the Trainer's last write) parses.
    """
    checkpoints = _checkpoints(out)
    marked = any((p / CHECKPOINT_COMPLETE).exists() for _, p in checkpoints)
    for _, path in checkpoints:
        if (path / CHECKPOINT_COMPLETE).exists():
            return path
        if not marked and _readable_state(path):
            log.warning(
                "%s has no completion marker (older chatforge?); trusting its trainer_state.json", path
            )
            return path
        log.warning(
            "skipping incomplete checkpoint %s (no %s: the save was interrupted)", path, CHECKPOINT_COMPLETE
        )
    return None


def _readable_state(checkpoint: Path) -> bool:
    try:
        json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return True


def check_output_dir(out: Path, required_bytes: int) -> None:
    """Create ``out``, prove it writable with a probe file, and check its disk has
    ``required_bytes`` free; :class:`OutputDirError` names the directory and the numbers."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".chatforge-write-probe-{os.getpid()}"
        probe.write_bytes(b"probe")
        probe.unlink()
    except OSError as err:
        raise OutputDirError(
            f"training.output_dir {out} is not writable: {err.strerror or err}. "
            "Choose a directory you can write to."
        ) from None
    free = shutil.disk_usage(out).free
    if free < required_bytes:
        raise OutputDirError(
            f"training.output_dir {out}: only {free / GIB:.2f} GiB free, this run needs about "
            f"{required_bytes / GIB:.2f} GiB (checkpoints and the final result). Free some space, "
            "choose another directory, or lower training.min_free_gb if the estimate is too cautious."
        )


def required_space(config: TrainConfig, model_bytes: int) -> int:
    """A cautious estimate of the disk a run needs. PEFT checkpoints hold only the adapter
    and its optimiser state, so ``training.min_free_gb`` covers them; a full fine-tune keeps
    up to ``save_total_limit`` checkpoints of weights plus two Adam moments in float32
    (about 3 × the float32 weights, i.e. up to 6 × a bf16 model's files) and the final model."""
    floor = int(config.training.min_free_gb * GIB)
    if config.method.name != "full":
        return floor
    kept = config.training.save_total_limit if config.training.save_total_limit > 0 else 3
    return max(floor, model_bytes * (3 * kept + 1))


def model_bytes(config: TrainConfig, model: Any) -> int:
    """Size of the weights: from the parameters when given, else the model's files on disk."""
    if model is not None:
        return sum(p.numel() * p.element_size() for p in model.parameters())
    path = Path(config.model.name_or_path).expanduser()
    if path.is_file():
        return path.stat().st_size
    if path.is_dir():
        return sum(f.stat().st_size for f in path.iterdir() if f.suffix in (".safetensors", ".bin", ".gguf"))
    return 0  # embedded models' names ('default') and unresolvable references: the loader reports those


def resume_path(resume_from: str, out: Path) -> str | None:
    if not resume_from:
        return None
    if resume_from == "latest":
        found = last_complete_checkpoint(out)
        if found is None:
            log.warning("training.resume_from=latest: no complete checkpoint in %s; starting fresh", out)
            return None
        log.info("resuming from %s", found)
        return str(found)
    path = Path(resume_from)
    if not (path / "trainer_state.json").exists():
        raise ValueError(
            f"training.resume_from: {path} is not a checkpoint directory (no trainer_state.json)"
        )
    if not (path / CHECKPOINT_COMPLETE).exists():
        log.warning("%s has no %s: it may be an interrupted save", path, CHECKPOINT_COMPLETE)
    return str(path)


@contextmanager
def pruned_ranks_quiet(trainer: Any) -> Iterator[None]:
    """AdaLoRA's budget can prune a matrix to rank 0, which it saves as an empty
    ``lora_A``/``lora_B``; peft warns that such tensors are ZeRO-3/FSDP shards saved without
    gathering. Unsharded, that is a false alarm and is hidden inside; sharded, it stays."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    config = getattr(model, "peft_config", {}).get("default")
    kind = getattr(getattr(config, "peft_type", None), "value", None)
    sharded = trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled
    with warnings.catch_warnings():
        if kind == "ADALORA" and not sharded:
            warnings.filterwarnings("ignore", message=r"Adapter .* LoRA tensor\(s\) have invalid shape")
        yield


def save_final(trainer: Any, tokenizer: Any, final: Path, info: dict[str, Any]) -> Path:
    """Write the trained adapter or model to a temporary directory, then rename it into place.

    Every process must call this. Under FSDP or DeepSpeed ZeRO-3 each process holds only a
    shard of the weights: ``Trainer.save_model`` gathers the full tensors (a collective)
    and the main process writes them, so ``final/`` loads with plain peft / transformers.
    """
    main = trainer.is_world_process_zero()
    accelerator = trainer.accelerator
    # One name for every process: peft creates the directory on all of them, and DeepSpeed's
    # fallback (below) writes into it from all of them.
    tmp = final.with_name(f".{final.name}.tmp")
    if main and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()  # nobody writes into the stale directory before it is gone
    model = accelerator.unwrap_model(trainer.model)
    base = model.get_base_model() if is_peft(model) else model
    base.config.use_cache = True
    if trainer.is_fsdp_enabled:
        # With sharded state dicts (FSDP2's default, fine for checkpoints) save_model writes
        # nothing; the final result is always gathered.
        accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
    # PEFT models save only the adapter; a fully fine-tuned model saves everything.
    trainer.save_model(str(tmp))
    if main:
        # The Trainer's pickled arguments are no part of the result (train_config.yaml is).
        (tmp / TRAINING_ARGS).unlink(missing_ok=True)
        tokenizer.save_pretrained(tmp)
        check_weights(tmp)
        info = {**info, "kind": "adapter" if is_peft(model) else "model"}
        (tmp / TRAIN_INFO).write_text(json.dumps(info, indent=2), encoding="utf-8")
        if final.exists():
            old = final.with_name(f".{final.name}.old")
            if old.exists():
                shutil.rmtree(old)
            final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old)
        else:
            tmp.rename(final)
        log.info("final %s written to %s", info["kind"], final)
    accelerator.wait_for_everyone()  # every process returns with final/ in place
    return final


def check_weights(directory: Path) -> None:
    """Raise :class:`EmptyWeightsError` unless ``directory`` holds safetensors weights with
    no empty tensor: what a save that missed the gathering of sharded weights leaves."""
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise EmptyWeightsError(f"{directory}: no weights were written (no *.safetensors file)")
    # AdaLoRA's budget may prune a matrix to rank 0: its factors are empty by design.
    pruned = _adalora_rank_pattern(directory)
    for file in files:
        with safe_open(file, framework="pt") as f:
            names = list(f.keys())
            empty = [n for n in names if math.prod(f.get_slice(n).get_shape()) == 0]
        if pruned and len(empty) < len(names):
            empty = []
        if not names or empty:
            what = (
                f"{len(empty)} of its {len(names)} tensors are empty ({empty[0]}, ...)"
                if empty
                else "no tensors"
            )
            raise EmptyWeightsError(
                f"{file}: {what}: the sharded weights were not gathered before saving. Under "
                "DeepSpeed ZeRO-3 set zero3_save_16bit_model: true in the accelerate config "
                "(stage3_gather_16bit_weights_on_model_save in a DeepSpeed JSON); the checkpoints "
                "are intact"
            )


def _adalora_rank_pattern(directory: Path) -> bool:
    """Whether ``directory`` holds an AdaLoRA adapter saved with a rank pattern."""
    try:
        config = json.loads((directory / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return str(config.get("peft_type", "")).upper() == "ADALORA" and bool(config.get("rank_pattern"))
