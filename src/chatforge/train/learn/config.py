"""``chatforge learn``'s configuration: the recipe in ``defaults.yaml``, a user's YAML over
it, then ``group.field=value`` overrides. The ``learn`` and ``retention`` groups are this
command's own; every other group is a ``chatforge train`` field and goes to
:func:`~chatforge.train.config.build_config`, so the training run is ``chatforge train``'s.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from chatforge.train.config import ConfigError, TrainConfig, build_config, coerce

DEFAULTS = Path(__file__).with_name("defaults.yaml")


@dataclass
class LearnOptions:
    """How a fact is turned into training rows and when training stops."""

    repeats: int = 24  # copies of each new fact's samples
    earlier_repeats: int = 16  # copies of each earlier fact's samples (--into)
    derive: bool = True  # ask each fact's subject in more forms, in English and Chinese (derive.py)
    derived_repeats: int = 24  # training rows per new fact spread over its derived prompts
    # the languages whose derived prompts are answered in them (translate.py): "en", "zh",
    # "en,zh" or "none"; into English only by default (measured: see defaults.yaml)
    translate_into: str = "en"
    # an English subject the base model cannot translate gets a Chinese name built word by
    # word (naming.py: 佐维安地图研究所), used as a Chinese alias
    name_in_chinese: bool = True
    # ... and a Chinese subject of a name and a word its English name (星云笔记本: "Xingyun notebook")
    name_in_pinyin: bool = True
    replay_tokens: int = 48  # replayed answers: the base model's first N greedy tokens
    replay_share: float = 0.55  # replay rows repeated until they are at least this share of the rows
    kin_repeats: int = 1  # copies of the personal replay prompts for a fact about the user (derive.kin_forms)
    steps_per_earlier_fact: int = 2  # --into: the step cap grows by this for each fact already held
    into_lr_scale: float = 0.5  # --into: training.learning_rate times this for an adapter that holds facts
    check_every: int = 2  # optimiser steps between tests of the stopping criterion
    min_steps: int = 6  # no stop before this step
    retention_every: int = 4  # steps between retention checks while they fail
    max_fact_tokens: int = 256  # longest prompt or answer accepted

    @property
    def translate_targets(self) -> frozenset[str]:
        return frozenset(t.strip() for t in self.translate_into.split(",")) - {"none", ""}


@dataclass
class RetentionOptions:
    """What the retention check accepts."""

    min_kept: float = 0.95
    max_leaked: int = 0
    min_rouge_l: float = 80.0
    max_new_tokens: int = 64
    max_base_gap: float = 0.5  # a changed answer the base model ranks this close to its own is kept
    base_bf16: bool = True  # a changed answer the base model itself gives in bfloat16 is kept


@dataclass
class LearnConfig:
    learn: LearnOptions = field(default_factory=LearnOptions)
    retention: RetentionOptions = field(default_factory=RetentionOptions)
    train: dict[str, Any] = field(default_factory=dict)  # flat ``group.field`` -> value for chatforge train

    def train_config(
        self, train_file: Path, replay_file: Path, output_dir: Path, source: str, earlier: int = 0
    ) -> TrainConfig:
        """The ``chatforge train`` config of one learning run, into an adapter that holds
        ``earlier`` facts already (their rows make the data set longer: the cap grows; its
        factors are trained already: the rate is scaled by ``learn.into_lr_scale``)."""
        flat = {
            **self.train,
            "data.train_file": str(train_file),
            "data.replay_file": str(replay_file),
            "data.format": "prompt_response",
            "training.output_dir": str(output_dir),
        }
        config = build_config(flat, source)
        if earlier and config.training.max_steps > 0:
            config.training.max_steps += self.learn.steps_per_earlier_fact * earlier
        if earlier:
            config.training.learning_rate *= self.learn.into_lr_scale
        return config

    def to_dict(self) -> dict[str, Any]:
        nested: dict[str, Any] = {}
        for key, value in self.train.items():
            group, name = key.split(".", 1)
            nested.setdefault(group, {})[name] = value
        return {
            **nested,
            "learn": dataclasses.asdict(self.learn),
            "retention": dataclasses.asdict(self.retention),
        }


_OWN = {"learn": LearnOptions, "retention": RetentionOptions}


def _read(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise ConfigError(f"learn config {path} not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path.name}: not valid YAML: {err}") from None
    if not isinstance(raw, dict) or not all(isinstance(v, dict) for v in raw.values()):
        raise ConfigError(f"{path.name}: expected a mapping of groups, each a mapping of fields")
    return {f"{group}.{name}": value for group, fields in raw.items() for name, value in fields.items()}


def load_learn_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> LearnConfig:
    """The defaults, then ``path``'s fields, then ``overrides`` (``{"lora.r": 8}``), validated."""
    flat = _read(DEFAULTS)
    source = "learn defaults"
    if path:
        flat.update(_read(Path(path)))
        source = Path(path).name
    if overrides:
        flat.update(overrides)
        source = f"{source} + overrides"
    config = LearnConfig()
    for key, value in flat.items():
        key = key.replace("-", "_")
        group, _, name = key.partition(".")
        if group in _OWN:
            hints = typing.get_type_hints(_OWN[group])
            if name not in hints:
                known = ", ".join(f"{group}.{n}" for n in hints)
                raise ConfigError(f"{source}: unknown field {key!r} (known: {known})")
            setattr(getattr(config, group), name, coerce(value, hints[name], key, source))
        else:
            config.train[key] = value
    _validate(config, source)
    return config


def _validate(config: LearnConfig, source: str) -> None:
    lo, rt = config.learn, config.retention
    for name, value in (
        ("learn.repeats", lo.repeats),
        ("learn.replay_tokens", lo.replay_tokens),
        ("learn.kin_repeats", lo.kin_repeats),
        ("learn.check_every", lo.check_every),
        ("learn.retention_every", lo.retention_every),
        ("learn.max_fact_tokens", lo.max_fact_tokens),
        ("retention.max_new_tokens", rt.max_new_tokens),
    ):
        if value <= 0:
            raise ConfigError(f"{source}: {name} must be > 0, got {value!r}")
    if (
        min(lo.earlier_repeats, lo.derived_repeats, lo.min_steps, lo.steps_per_earlier_fact, rt.max_leaked)
        < 0
    ):
        raise ConfigError(
            f"{source}: learn.earlier_repeats, learn.derived_repeats, learn.min_steps, "
            "learn.steps_per_earlier_fact and retention.max_leaked must be >= 0"
        )
    if lo.translate_targets - {"en", "zh"}:
        raise ConfigError(
            f"{source}: learn.translate_into must be en, zh, 'en,zh' or none, got {lo.translate_into!r}"
        )
    if not 0 < lo.into_lr_scale <= 1:
        raise ConfigError(f"{source}: learn.into_lr_scale must be in (0, 1], got {lo.into_lr_scale!r}")
    if not 0 <= lo.replay_share < 1:
        raise ConfigError(f"{source}: learn.replay_share must be in [0, 1), got {lo.replay_share!r}")
    if rt.max_base_gap < 0:
        raise ConfigError(f"{source}: retention.max_base_gap must be >= 0, got {rt.max_base_gap!r}")
    if not 0 <= rt.min_kept <= 1:
        raise ConfigError(f"{source}: retention.min_kept must be in [0, 1], got {rt.min_kept!r}")
    if not 0 <= rt.min_rouge_l <= 100:
        raise ConfigError(f"{source}: retention.min_rouge_l must be in [0, 100], got {rt.min_rouge_l!r}")
    # Catch a bad training field now, before a model is loaded (the files are filled in later).
    config.train_config(Path("x.jsonl"), Path("replay.jsonl"), Path("out"), source)
