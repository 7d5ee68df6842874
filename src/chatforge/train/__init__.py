"""Fine-tuning: data formats → messages → ``Template.render`` → Trainer → adapter or merged model.

Public API (imported lazily so that ``chatforge --help`` stays fast)::

    from chatforge.train import load_config, train, evaluate, export

    config = load_config("config.yaml", {"lora.r": 16})
    result = train(config)                      # TrainResult: final_dir, losses, stats
    export(result.final_dir, "merged/")         # standalone HF model directory
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "TrainConfig": "chatforge.train.config",
    "ConfigError": "chatforge.train.config",
    "load_config": "chatforge.train.config",
    "build_config": "chatforge.train.config",
    "Sample": "chatforge.train.data",
    "DataError": "chatforge.train.data",
    "FormatOptions": "chatforge.train.data",
    "load_samples": "chatforge.train.data",
    "encode_samples": "chatforge.train.dataset",
    "pack": "chatforge.train.dataset",
    "Collator": "chatforge.train.dataset",
    "PlainTemplate": "chatforge.train.dataset",
    "sanity_table": "chatforge.train.dataset",
    "apply_method": "chatforge.train.methods",
    "train": "chatforge.train.trainer",
    "TrainResult": "chatforge.train.trainer",
    "evaluate": "chatforge.train.evaluate",
    "evaluate_file": "chatforge.train.evaluate",
    "score": "chatforge.train.metrics",
    "export": "chatforge.train.export",
    "merge_adapter": "chatforge.train.export",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'chatforge.train' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
