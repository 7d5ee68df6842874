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

Faults (:mod:`chatforge.train.checkpoints`): checkpoints are marked complete once saved and
``resume_from: latest`` takes the newest marked one. Before anything is loaded,
:func:`~chatforge.train.checkpoints.check_output_dir` proves the output directory writable
and its disk roomy enough, so a bad location fails in a second rather than at the first save.
"""

from __future__ import annotations

import json
import logging
import math
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from chatforge import env
from chatforge.models.device import cpu_has_bf16
from chatforge.models.loader import load_weights, resolve
from chatforge.templates import IGNORE_INDEX, Template, get_template
from chatforge.train.checkpoints import (
    CheckpointMarker,
    check_output_dir,
    model_bytes,
    pruned_ranks_quiet,
    required_space,
    resume_path,
    save_final,
)
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
from chatforge.train.lean_adalora import lean_adalora
from chatforge.train.methods import apply_method, indistinct_output_rows, is_peft
from chatforge.train.plot import plot_loss
from chatforge.train.precision import frozen_linears_in_bf16

log = logging.getLogger(__name__)

METRICS = "metrics.jsonl"


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
    otherwise ``config.model.name_or_path`` is loaded. A given PEFT model (an adapter loaded
    trainable) keeps training its adapter instead of getting a new one."""
    from transformers import EarlyStoppingCallback, Trainer, TrainingArguments, set_seed

    t, d = config.training, config.data
    set_seed(t.seed)
    out = Path(t.output_dir)
    check_output_dir(out, required_space(config, model_bytes(config, model)))  # before the slow load
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
    # A model given with a trainable adapter already attached keeps training that adapter
    # (``chatforge learn --into``): its ranks stay as they are, so AdaLoRA's budget is not rerun.
    continuing = is_peft(model)
    model.config.use_cache = False  # training: no KV cache (also lets packed positions build the mask)
    if continuing:
        log.info("continuing the adapter already attached to the model")
    else:
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
    if config.method.name == "adalora" and not continuing:
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
    resume = resume_path(t.resume_from, out)
    # Under bf16 autocast the frozen base weights are cast once, not at every forward pass;
    # only an adapter's checkpoints are saved inside, so no cast weight is ever written.
    # One process only: sharding wrappers (FSDP, ZeRO) flatten parameters of one dtype.
    cast_frozen = args.bf16 and is_peft(model) and world == 1
    cast = frozen_linears_in_bf16(model) if cast_frozen else nullcontext(0)
    with pruned_ranks_quiet(trainer), cast as n_cast, lean_adalora(model):  # checkpoints are saved inside
        if n_cast:
            log.info("%d frozen linear layers held in bf16 while training", n_cast)
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
    with pruned_ranks_quiet(trainer):
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
