"""Fine-tuning configuration: one dataclass per argument group, loadable from YAML,
every field overridable on the command line as ``--group.field value``.

Each field carries its help text in ``metadata["help"]``; the CLI's ``--help`` is
generated from it. :func:`load_config` merges YAML and overrides and validates the
result, with errors that name the file and the field.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

METHODS = ("lora", "adalora", "ptuning_v2", "full", "qlora")
FORMATS = ("auto", "chatglm3", "prompt_response", "openai", "sharegpt", "alpaca")
LOSS_MODES = ("assistant", "last", "all")
TRUNCATION = ("drop_oldest", "truncate", "error")


class ConfigError(ValueError):
    """A configuration value is missing or out of range; the text names the field."""


def _f(default: Any, help: str, **kw: Any) -> Any:
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class ModelConfig:
    """The model to fine-tune."""

    name_or_path: str = _f(
        "default", "'default' or another embedded model's name, a local model directory or a .gguf file"
    )
    template: str = _f("auto", "chat template: auto, hf, chatml, chatglm3, react")
    dtype: str = _f("auto", "weights dtype: auto (bf16 where fast), float32, bfloat16, float16")
    device: str = _f("auto", "auto, cpu, cuda, cuda:N")


@dataclass
class DataConfig:
    """Training data and how it is tokenised."""

    train_file: str = _f("", "training data: .json, .jsonl or .csv")
    eval_file: str = _f("", "evaluation data (same formats); empty: none")
    replay_file: str = _f(
        "",
        "replayed samples mixed into the training data, e.g. the base model's own answers to "
        "unrelated prompts (same formats); training.kl_to_base regularises on them; empty: none",
    )
    format: str = _f("auto", f"record format: {', '.join(FORMATS)}")
    prompt_column: str = _f("prompt", "prompt/response format: the prompt column")
    response_column: str = _f("response", "prompt/response format: the response column")
    system_column: str = _f("system", "prompt/response format: an optional system-prompt column")
    plain: bool = _f(False, "prompt/response without the chat template: prompt + response + eos")
    max_length: int = _f(1024, "maximum tokens per sample")
    truncation: str = _f("drop_oldest", "over max_length: drop_oldest (whole turns), truncate, error")
    loss_mode: str = _f("assistant", "which turns are trained: assistant (every one), last, all")
    packing: bool = _f(False, "pack several samples per row (block-diagonal attention)")
    skip_invalid: bool = _f(False, "skip invalid records (and report them) instead of stopping")
    max_errors: int = _f(20, "how many invalid records to list before stopping")


@dataclass
class MethodConfig:
    """Which parameters are trained."""

    name: str = _f("lora", f"method: {', '.join(METHODS)}")


@dataclass
class LoraConfig:
    """LoRA / AdaLoRA / QLoRA adapters."""

    r: int = _f(8, "rank (AdaLoRA: the target average rank)")
    alpha: int = _f(16, "scaling numerator: the update is scaled by alpha / r")
    dropout: float = _f(0.05, "dropout on the adapter input")
    target_modules: list[str] = _f([], "module names to adapt; empty: the architecture's default")
    layers: list[int] = _f([], "indices of the transformer layers to adapt (e.g. 12,13,14); empty: all")
    trainable_tokens: list[str] = _f(
        [],
        "tokens whose input-embedding and output rows train too (LoRA/AdaLoRA), e.g. <tool_call>,</tool_call> "
        "when the base model never learned them; empty: none",
    )
    init_r: int = _f(12, "AdaLoRA: initial rank before pruning")
    tinit: int = _f(0, "AdaLoRA: warm-up steps before rank pruning")
    tfinal: int = _f(0, "AdaLoRA: final steps with fixed ranks")
    delta_t: int = _f(1, "AdaLoRA: steps between rank updates")


@dataclass
class PTuningConfig:
    """P-Tuning v2 (trained prefixes in every layer's key/value cache)."""

    num_virtual_tokens: int = _f(16, "prefix length (ChatGLM's pre_seq_len)")
    projection: bool = _f(False, "reparametrise prefixes through an MLP")


@dataclass
class TrainingConfig:
    """The optimisation loop."""

    output_dir: str = _f("output", "where checkpoints, logs, the loss plot and the final result go")
    seed: int = _f(42, "random seed")
    num_epochs: float = _f(1.0, "epochs (ignored when max_steps > 0)")
    max_steps: int = _f(-1, "stop after this many optimiser steps (-1: use num_epochs)")
    batch_size: int = _f(4, "samples (or packed rows) per device per step")
    gradient_accumulation_steps: int = _f(1, "micro-batches per optimiser step")
    learning_rate: float = _f(2e-4, "peak learning rate")
    weight_decay: float = _f(0.0, "AdamW weight decay")
    warmup_ratio: float = _f(0.0, "fraction of steps for linear warm-up")
    lr_scheduler: str = _f("linear", "HF scheduler name: linear, cosine, constant, ...")
    max_grad_norm: float = _f(1.0, "gradient clipping")
    kl_to_base: float = _f(
        0.0,
        "weight of a KL(base || tuned) term on the response tokens of data.replay_file samples; "
        "the base is the same model with its adapter disabled (PEFT methods only); 0: off",
    )
    replay_cross_entropy: bool = _f(
        True,
        "with kl_to_base: also train data.replay_file samples with cross-entropy on their "
        "tokens (false: the KL term alone, so a truncated replayed answer does not teach its early end)",
    )
    gradient_checkpointing: bool = _f(False, "recompute activations to save memory (slower)")
    bf16: str = _f("auto", "bf16 autocast: auto (where supported), true, false")
    logging_steps: int = _f(1, "log the loss every N steps")
    eval_steps: int = _f(0, "evaluate every N steps (0: once per epoch when eval data is given)")
    save_steps: int = _f(0, "save a checkpoint every N steps (0: once per epoch)")
    save_total_limit: int = _f(2, "keep at most this many checkpoints")
    early_stopping_patience: int = _f(0, "stop after N evaluations without improvement (0: off)")
    resume_from: str = _f(
        "", "resume: 'latest' (newest complete checkpoint) or a checkpoint directory; empty: start fresh"
    )
    min_free_gb: float = _f(
        1.0, "refuse to start with less free disk in output_dir (GiB); full fine-tuning needs more"
    )
    plot: bool = _f(True, "write loss.png")
    progress_bar: bool = _f(True, "show a progress bar")


@dataclass
class TrainConfig:
    """Everything ``chatforge train`` needs."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    ptuning: PTuningConfig = field(default_factory=PTuningConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self, source: str = "config") -> TrainConfig:
        """Check every field; raise :class:`ConfigError` naming the first bad one."""

        def fail(name: str, rule: str, value: Any) -> None:
            raise ConfigError(f"{source}: {name} {rule}, got {value!r}")

        d, t, lo = self.data, self.training, self.lora
        if not d.train_file:
            fail("data.train_file", "is required (a .json, .jsonl or .csv file)", d.train_file)
        for name, value, allowed in (
            ("data.format", d.format, FORMATS),
            ("data.loss_mode", d.loss_mode, LOSS_MODES),
            ("data.truncation", d.truncation, TRUNCATION),
            ("method.name", self.method.name, METHODS),
            ("training.bf16", t.bf16, ("auto", "true", "false")),
        ):
            if value not in allowed:
                fail(name, f"must be one of {', '.join(allowed)}", value)
        positive = {
            "data.max_length": d.max_length,
            "data.max_errors": d.max_errors,
            "lora.r": lo.r,
            "lora.alpha": lo.alpha,
            "lora.init_r": lo.init_r,
            "lora.delta_t": lo.delta_t,
            "ptuning.num_virtual_tokens": self.ptuning.num_virtual_tokens,
            "training.batch_size": t.batch_size,
            "training.gradient_accumulation_steps": t.gradient_accumulation_steps,
            "training.learning_rate": t.learning_rate,
            "training.logging_steps": t.logging_steps,
        }
        for name, value in positive.items():
            if not value > 0:
                fail(name, "must be > 0", value)
        non_negative = {
            "training.weight_decay": t.weight_decay,
            "training.eval_steps": t.eval_steps,
            "training.save_steps": t.save_steps,
            "training.early_stopping_patience": t.early_stopping_patience,
            "lora.tinit": lo.tinit,
            "lora.tfinal": lo.tfinal,
            "training.max_grad_norm": t.max_grad_norm,
            "training.kl_to_base": t.kl_to_base,
            "training.min_free_gb": t.min_free_gb,
        }
        for name, value in non_negative.items():
            if value < 0:
                fail(name, "must be >= 0", value)
        if any(i < 0 for i in lo.layers):
            fail("lora.layers", "must be layer indices >= 0", lo.layers)
        if not 0 <= lo.dropout < 1:
            fail("lora.dropout", "must be in [0, 1)", lo.dropout)
        if not 0 <= t.warmup_ratio < 1:
            fail("training.warmup_ratio", "must be in [0, 1)", t.warmup_ratio)
        if t.max_steps <= 0 and t.num_epochs <= 0:
            fail("training.num_epochs", "must be > 0 when training.max_steps is not set", t.num_epochs)
        if t.max_steps == 0 or t.max_steps < -1:
            fail("training.max_steps", "must be > 0, or -1 to use num_epochs", t.max_steps)
        if self.method.name == "adalora" and lo.init_r < lo.r:
            fail("lora.init_r", f"must be >= lora.r ({lo.r}) for AdaLoRA", lo.init_r)
        if d.packing and self.method.name == "ptuning_v2":
            fail(
                "data.packing",
                "cannot be combined with method ptuning_v2 (the prefix cache defeats the packed mask)",
                d.packing,
            )
        if d.eval_file and t.eval_steps and t.save_steps and t.save_steps % t.eval_steps:
            fail(
                "training.save_steps",
                f"must be a multiple of training.eval_steps ({t.eval_steps}) to keep the best checkpoint",
                t.save_steps,
            )
        if t.kl_to_base and not d.replay_file:
            fail("training.kl_to_base", "needs data.replay_file (the samples it applies to)", t.kl_to_base)
        if t.kl_to_base and self.method.name == "full":
            fail(
                "training.kl_to_base",
                "needs an adapter method (lora, adalora, qlora, ptuning_v2): full fine-tuning "
                "keeps no base model to compare with",
                t.kl_to_base,
            )
        if t.early_stopping_patience and not d.eval_file:
            fail("training.early_stopping_patience", "needs data.eval_file", t.early_stopping_patience)
        return self


# -- building from YAML and overrides ----------------------------------------------------
def groups() -> dict[str, type]:
    """Group name -> its dataclass."""
    hints = typing.get_type_hints(TrainConfig)
    return {f.name: hints[f.name] for f in dataclasses.fields(TrainConfig)}


def field_specs() -> list[tuple[str, str, Any, str, Any]]:
    """``(group, name, type, help, default)`` for every configurable field."""
    specs = []
    for group, cls in groups().items():
        hints = typing.get_type_hints(cls)
        default = cls()
        for f in dataclasses.fields(cls):
            specs.append((group, f.name, hints[f.name], f.metadata.get("help", ""), getattr(default, f.name)))
    return specs


def coerce(value: Any, kind: Any, name: str, source: str) -> Any:
    """``value`` (from YAML or the command line) as ``kind``, or a ConfigError naming the field."""
    origin = typing.get_origin(kind)
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("true", "1", "yes", "on"):
                return True
            if text in ("false", "0", "no", "off"):
                return False
            raise ValueError
        if kind is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if kind is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if kind is str:
            if isinstance(value, (dict, list)):
                raise ValueError
            return "" if value is None else str(value)
        if origin is list:
            (item,) = typing.get_args(kind) or (str,)
            if isinstance(value, str):
                return [coerce(v.strip(), item, name, source) for v in value.split(",") if v.strip()]
            if isinstance(value, list):
                return [coerce(v, item, name, source) for v in value]
            raise ValueError
        if origin in (types.UnionType, typing.Union):
            return value
    except ConfigError:
        raise  # a list item's own error names the item
    except (TypeError, ValueError):
        pass
    else:
        return value
    type_name = getattr(kind, "__name__", str(kind))
    raise ConfigError(f"{source}: {name} must be a {type_name}, got {value!r}")


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """A validated config from a YAML file (optional) and ``{"group.field": value}`` overrides."""
    source = Path(path).name if path else "command line"
    raw: dict[str, Any] = {}
    if path:
        p = Path(path)
        if not p.exists():
            raise ConfigError(f"config file {p} not found")
        try:
            raw = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{source}: not valid YAML: {err}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{source}: expected a mapping of groups ({', '.join(groups())})")
    flat: dict[str, Any] = {}
    for group, values in raw.items():
        if group not in groups():
            raise ConfigError(f"{source}: unknown group {group!r}; expected one of {', '.join(groups())}")
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: {group} must be a mapping of fields")
        for key, value in values.items():
            flat[f"{group}.{key}"] = value
    flat.update(overrides or {})
    return build_config(flat, source)


def build_config(flat: dict[str, Any], source: str = "config") -> TrainConfig:
    specs = {f"{g}.{n}": t for g, n, t, _, _ in field_specs()}
    config = TrainConfig()
    for key, value in flat.items():
        key = key.replace("-", "_")
        if key not in specs:
            raise ConfigError(f"{source}: unknown field {key!r} (see `chatforge train --help`)")
        group, name = key.split(".", 1)
        setattr(getattr(config, group), name, coerce(value, specs[key], key, source))
    return config.validate(source)


def save_config(config: TrainConfig, path: Path) -> None:
    path.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False, allow_unicode=True), encoding="utf-8")
