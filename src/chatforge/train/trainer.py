"""The training run: data → template → method → Hugging Face ``Trainer`` → final result.

The output directory holds ``checkpoint-N/`` (resumable: weights or adapter, optimiser,
scheduler, RNG states), ``metrics.jsonl`` (one JSON object per log/eval event),
``loss.png``, ``data_stats.json``, ``train_config.yaml`` and ``final/``: the adapter
(PEFT methods) or the full model, with tokenizer and chat template, plus
``chatforge_train.json`` saying which base model and method made it. ``final/`` is
written to a temporary directory and renamed, so it is either complete or absent. It is
saved through ``Trainer.save_model``, which gathers weights that FSDP or DeepSpeed ZeRO-3
shard across processes, so it holds full tensors whatever the launch.

``data.replay_file`` samples join the training rows; with ``training.kl_to_base`` they
also carry a KL term to the base model (:class:`~chatforge.train.kl.KLTrainer`). AdaLoRA's
rank budget is updated after every optimiser step (:class:`AdaLoraBudget`).

Faults: the Trainer writes ``checkpoint-N/`` in place, so a run killed mid-save leaves a
partial directory. :class:`CheckpointMarker` writes ``CHECKPOINT_COMPLETE`` into a
checkpoint once the Trainer has finished saving it (files fsynced first), and
``resume_from: latest`` takes the newest checkpoint that has it. Before anything is
loaded, :func:`check_output_dir` proves the output directory writable and its disk
roomy enough, so a bad location fails in a second rather than at the first save.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from chatforge import env
from chatforge.models.device import cpu_has_bf16
from chatforge.models.loader import load_weights, resolve
from chatforge.templates import IGNORE_INDEX, Template, get_template
from chatforge.train.config import TrainConfig, save_config
from chatforge.train.data import FormatOptions, load_samples
from chatforge.train.dataset import (
    Collator,
    Example,
    PlainTemplate,
    TokenStats,
    TrainDataset,
    encode_samples,
    pack,
    sanity_table,
)
from chatforge.train.kl import KLTrainer
from chatforge.train.methods import apply_method, indistinct_output_rows, is_peft
from chatforge.train.plot import plot_loss

log = logging.getLogger(__name__)

TRAIN_INFO = "chatforge_train.json"
METRICS = "metrics.jsonl"
CHECKPOINT_COMPLETE = "chatforge_checkpoint_complete.json"
TRAINING_ARGS = "training_args.bin"  # written by Trainer.save_model
_CHECKPOINT_NAME = re.compile(r"^checkpoint-(\d+)$")
GIB = 1 << 30


class OutputDirError(RuntimeError):
    """The output directory cannot be written, or its disk is too full to hold the run."""


class EmptyWeightsError(RuntimeError):
    """The final result's weights are missing or empty (sharded weights saved ungathered)."""


@dataclass
class TrainResult:
    output_dir: Path
    final_dir: Path
    global_step: int
    losses: list[float] = field(default_factory=list)  # logged training losses, in order
    stats: dict[str, Any] = field(default_factory=dict)
    best_checkpoint: str | None = None


def format_options(config: TrainConfig) -> FormatOptions:
    d = config.data
    return FormatOptions(d.format, d.prompt_column, d.response_column, d.system_column, d.plain)


def build_dataset(
    config: TrainConfig, template: Template, file: str, replay_file: str = ""
) -> tuple[TrainDataset, TokenStats, dict[str, Any]]:
    """The rows to train on: ``file``'s samples, then ``replay_file``'s (marked for the
    KL-to-base term when ``training.kl_to_base`` is set), packed if asked."""
    d = config.data
    t = config.training
    examples, stats, summary = _encode_file(config, template, file)
    if replay_file:
        replayed, _, summary["replay"] = _encode_file(config, template, replay_file)
        if t.kl_to_base:
            replayed = [ex.as_replay(cross_entropy=t.replay_cross_entropy) for ex in replayed]
        examples += replayed
    items: list[Any] = pack(examples, d.max_length) if d.packing else examples
    summary["rows"] = len(items)
    if summary["samples"] and examples:
        log.info("\n%s", sanity_table(examples[0], template.tokenizer, limit=64))
    return TrainDataset(items), stats, summary


def _encode_file(
    config: TrainConfig, template: Template, file: str
) -> tuple[list[Example], TokenStats, dict[str, Any]]:
    d = config.data
    samples, report = load_samples(file, format_options(config), d.skip_invalid, d.max_errors)
    examples, stats = encode_samples(samples, template, d.max_length, d.loss_mode, d.truncation)
    if not examples:
        raise ValueError(f"{file}: no sample has trained tokens left (see the warnings above)")
    summary = {
        "file": str(file),
        "records": report.records,
        "invalid_skipped": report.skipped,
        "invalid_reasons": dict(report.reasons()),
        "formats": dict(report.formats),
        **stats.summary(),
    }
    return examples, stats, summary


def _bf16(config: TrainConfig, model: Any) -> bool:
    choice = config.training.bf16
    if choice != "auto":
        return choice == "true"
    device = next(model.parameters()).device
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()

    return device.type == "cpu" and cpu_has_bf16()


class MetricsLog(TrainerCallback):
    """Writes every log event (loss, eval loss, learning rate) as a JSON line; rewound on resume."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if not state.is_world_process_zero:
            return
        # After a resume, forget events past the checkpoint we resumed from.
        rows = []
        if self.path.exists():
            rows = [json.loads(x) for x in self.path.read_text(encoding="utf-8").splitlines() if x.strip()]
        rows = [r for r in rows if r.get("step", 0) <= state.global_step]
        self.path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kw: Any) -> None:
        if not state.is_world_process_zero or not logs:
            return
        row = {"step": state.global_step, "epoch": state.epoch, **logs}
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")


class AdaLoraBudget(TrainerCallback):
    """AdaLoRA's rank allocation. peft needs ``update_and_allocate`` after every optimiser
    step, while the gradients are still there (they measure each rank's importance);
    without it no rank is ever pruned and the budget schedule is ignored."""

    def on_optimizer_step(self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any) -> None:
        model.base_model.update_and_allocate(state.global_step)


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


def _model_bytes(config: TrainConfig, model: Any) -> int:
    """Size of the weights: from the parameters when given, else the model's files on disk."""
    if model is not None:
        return sum(p.numel() * p.element_size() for p in model.parameters())
    path = Path(config.model.name_or_path).expanduser()
    if path.is_file():
        return path.stat().st_size
    if path.is_dir():
        return sum(f.stat().st_size for f in path.iterdir() if f.suffix in (".safetensors", ".bin", ".gguf"))
    return 0  # 'default' and unresolvable references: the loader reports those


def load_for_training(config: TrainConfig) -> tuple[Any, Any, str]:
    source = resolve(config.model.name_or_path)
    model, tokenizer = load_weights(source, device=config.model.device, dtype=config.model.dtype)
    return model, tokenizer, str(source.path)


def train(
    config: TrainConfig,
    model: Any = None,
    tokenizer: Any = None,
    base_model: str | None = None,
    callbacks: list[Any] | None = None,
) -> TrainResult:
    """Fine-tune as ``config`` says. ``model``/``tokenizer`` may be given (tests, notebooks);
    otherwise ``config.model.name_or_path`` is loaded."""
    from transformers import EarlyStoppingCallback, Trainer, TrainingArguments, set_seed

    t, d = config.training, config.data
    set_seed(t.seed)
    out = Path(t.output_dir)
    check_output_dir(out, required_space(config, _model_bytes(config, model)))  # before the slow load
    if model is None:
        model, tokenizer, base_model = load_for_training(config)
    template = get_template(config.model.template, tokenizer)
    save_config(config, out / "train_config.yaml")

    train_ds, _, train_summary = build_dataset(config, template, d.train_file, d.replay_file)
    eval_ds = None
    stats = {"train": train_summary}
    if d.eval_file:
        eval_ds, _, stats["eval"] = build_dataset(config, template, d.eval_file)
    (out / "data_stats.json").write_text(json.dumps(stats, indent=2, ensure_ascii=False), encoding="utf-8")
    log.info("data: %s", json.dumps(train_summary, ensure_ascii=False))

    world = env.world_size()
    steps_per_epoch = math.ceil(len(train_ds) / (t.batch_size * world * t.gradient_accumulation_steps))
    total_steps = t.max_steps if t.max_steps > 0 else math.ceil(steps_per_epoch * t.num_epochs)
    model.config.use_cache = False  # training: no KV cache (also lets packed positions build the mask)
    if config.method.name in ("lora", "adalora", "qlora"):
        warn_indistinct_tokens(model, tokenizer, train_ds, config.lora.trainable_tokens)
    model = apply_method(model, config.method.name, config.lora, config.ptuning, total_steps, tokenizer)

    evaluating = eval_ds is not None
    eval_strategy = ("steps" if t.eval_steps else "epoch") if evaluating else "no"
    save_strategy = "steps" if t.save_steps or (evaluating and t.eval_steps) else "epoch"
    save_steps = t.save_steps or t.eval_steps or 500
    if evaluating and t.eval_steps and t.early_stopping_patience:
        save_steps = t.eval_steps  # keep-best needs a checkpoint at every evaluation
    args = TrainingArguments(
        output_dir=str(out),
        seed=t.seed,
        data_seed=t.seed,
        num_train_epochs=t.num_epochs,
        max_steps=t.max_steps,
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        learning_rate=t.learning_rate,
        weight_decay=t.weight_decay,
        warmup_steps=int(t.warmup_ratio * total_steps),
        lr_scheduler_type=t.lr_scheduler,
        max_grad_norm=t.max_grad_norm,
        gradient_checkpointing=t.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False} if t.gradient_checkpointing else None,
        bf16=_bf16(config, model),
        logging_steps=t.logging_steps,
        eval_strategy=eval_strategy,
        eval_steps=t.eval_steps or None,
        save_strategy=save_strategy,
        save_steps=save_steps,
        save_total_limit=t.save_total_limit,
        load_best_model_at_end=evaluating,
        metric_for_best_model="eval_loss" if evaluating else None,
        greater_is_better=False if evaluating else None,
        remove_unused_columns=False,
        disable_tqdm=not t.progress_bar,
        report_to="none",
        use_cpu=config.model.device == "cpu" or not torch.cuda.is_available(),
        dataloader_num_workers=0,
    )
    cbs = [MetricsLog(out / METRICS), CheckpointMarker(out), *(callbacks or [])]
    if evaluating and t.early_stopping_patience:
        cbs.append(EarlyStoppingCallback(early_stopping_patience=t.early_stopping_patience))
    if config.method.name == "adalora":
        cbs.append(AdaLoraBudget())
    trainer_class: Any = Trainer
    extra: dict[str, Any] = {}
    if t.kl_to_base:
        trainer_class, extra = KLTrainer, {"kl_weight": t.kl_to_base}
    trainer = trainer_class(
        **extra,
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        data_collator=Collator(pad_id=_pad_id(tokenizer)),
        processing_class=tokenizer,
        callbacks=cbs,
    )
    resume = _resume_path(t.resume_from, out)
    trainer.train(resume_from_checkpoint=resume)

    result = TrainResult(
        output_dir=out,
        final_dir=out / "final",
        global_step=trainer.state.global_step,
        losses=[h["loss"] for h in trainer.state.log_history if "loss" in h],
        stats=stats,
        best_checkpoint=trainer.state.best_model_checkpoint,
    )
    info = {
        "base_model": base_model,
        "method": config.method.name,
        "template": "plain" if isinstance(template, PlainTemplate) or d.plain else config.model.template,
        "global_step": result.global_step,
        "best_checkpoint": result.best_checkpoint,
    }
    save_final(trainer, tokenizer, out / "final", info)  # every process: gathering the weights is collective
    if trainer.is_world_process_zero() and t.plot:
        plot_loss(out / METRICS, out / "loss.png", title=f"{config.method.name} · {Path(d.train_file).name}")
    return result


def warn_indistinct_tokens(
    model: Any, tokenizer: Any, dataset: TrainDataset, trainable: list[str]
) -> list[str]:
    """Warn about special tokens the data trains whose output rows the base model never
    learned (they look like thousands of others): adapters cannot teach the model to emit
    them unless ``lora.trainable_tokens`` trains those rows. Returns the tokens warned about."""
    special = set(getattr(tokenizer, "added_tokens_decoder", {}) or {}) | set(tokenizer.all_special_ids)
    trained = {t for item in dataset.items for t in item.labels if t != IGNORE_INDEX} & special
    covered = {tokenizer.convert_tokens_to_ids(t) for t in trainable}
    found = indistinct_output_rows(model, trained - covered)
    names = []
    for tid, n in found.items():
        name = tokenizer.convert_ids_to_tokens(tid)
        names.append(name)
        log.warning(
            "the data trains %s (id %d), but its output row points the same way as %d other tokens' rows "
            "(the base model never learned to emit it): an adapter alone cannot make the model write it; "
            "add it to lora.trainable_tokens",
            name,
            tid,
            n,
        )
    return names


def _pad_id(tokenizer: Any) -> int:
    for tid in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return int(tid)
    return 0


def _resume_path(resume_from: str, out: Path) -> str | None:
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
    from safetensors import safe_open

    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise EmptyWeightsError(f"{directory}: no weights were written (no *.safetensors file)")
    for file in files:
        with safe_open(file, framework="pt") as f:
            names = list(f.keys())
            empty = [n for n in names if math.prod(f.get_slice(n).get_shape()) == 0]
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
