"""Resolving a model reference and loading it: an embedded model (``default`` or a name
from :data:`chatforge.models.embedded.EMBEDDED`), a local Hugging Face directory, a GGUF
file, or a ChatGLM checkpoint. Nothing is ever fetched from a model hub."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from chatforge.models.chatglm.adapters import (
    convert_chatglm_adapter,
    convert_chatglm_ptuning,
    is_chatglm_layout_adapter,
)
from chatforge.models.chatglm.convert import load_chatglm
from chatforge.models.device import resolve_device, resolve_dtype
from chatforge.models.embedded import cache_dir, ensure_hf_dir, find_embedded

log = logging.getLogger(__name__)


class ModelNotFoundError(FileNotFoundError):
    """No usable model at the given reference; the text says what was expected."""


@dataclass
class ModelSource:
    kind: str  # "hf", "gguf", "chatglm"
    path: Path
    name: str


def resolve(ref: str | Path) -> ModelSource:
    """Where a model reference points, checked before anything heavy is loaded."""
    text = str(ref)
    spec = find_embedded(text)
    if spec is not None:
        return ModelSource("hf", ensure_hf_dir(spec), spec.name)
    path = Path(text).expanduser()
    if not path.exists():
        hint = ""
        if not text.startswith((".", "/", "~")) and text.count("/") == 1:
            hint = (
                f" {text!r} looks like a model-hub id: chatforge never downloads models. "
                "Copy the model to this machine and pass its directory."
            )
        raise ModelNotFoundError(
            f"no model at {text!r}: expected 'default', an embedded model's name (chatforge model list), "
            f"a local model directory or a .gguf file.{hint}"
        )
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ModelNotFoundError(
                f"{path} is a file but not a .gguf model; pass a .gguf file or a model directory"
            )
        return ModelSource("gguf", path, path.stem)
    config = path / "config.json"
    if not config.exists():
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return ModelSource("gguf", ggufs[0], ggufs[0].stem)
        raise ModelNotFoundError(
            f"{path} is not a model directory: it has no config.json"
            + (f" and {len(ggufs)} .gguf files (pass one of them)" if ggufs else "")
        )
    try:
        model_type = json.loads(config.read_text()).get("model_type")
    except (json.JSONDecodeError, OSError) as err:
        raise ModelNotFoundError(f"{config} is not valid JSON: {err}") from None
    if model_type == "chatglm":
        return ModelSource("chatglm", path, path.name)
    if not (
        any(path.glob("*.safetensors"))
        or any(path.glob("*.bin"))
        or (path / "model.safetensors.index.json").exists()
    ):
        raise ModelNotFoundError(f"{path} has a config.json but no weights (*.safetensors or *.bin)")
    return ModelSource("hf", path, path.name)


def load_weights(
    source: ModelSource, device: str | None = "auto", dtype: str | torch.dtype | None = "auto"
) -> tuple[Any, Any]:
    """(model, tokenizer) for a resolved source, on the chosen device and dtype."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    started = time.perf_counter()
    log.info("loading %s (%s) on %s as %s", source.name, source.kind, dev, dt)
    if source.kind == "chatglm":
        model, tokenizer = load_chatglm(source.path, dtype=dt, device=dev)
    elif source.kind == "gguf":
        folder, name = source.path.parent, source.path.name
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=dt, local_files_only=True)
    else:
        tokenizer = AutoTokenizer.from_pretrained(source.path, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(source.path, dtype=dt, local_files_only=True)
    model = model.to(dev).eval()
    log.info("loaded %s in %.1f s", source.name, time.perf_counter() - started)
    return model, tokenizer


def prepare_adapter(adapter: str | Path, source: ModelSource) -> Path:
    """The adapter directory to attach; one trained on the original ChatGLM layout is mapped
    (once, cached) onto the converted model's module names."""
    path = Path(adapter).expanduser()
    if source.kind != "chatglm":
        return path
    if not is_chatglm_layout_adapter(path):
        return path
    stamp = hashlib.sha256(f"{path.resolve()}:{path.stat().st_mtime_ns}".encode()).hexdigest()[:16]
    target = cache_dir() / "converted-adapters" / f"{path.name}-{stamp}"
    if not (target / "adapter_config.json").exists():
        convert = (
            convert_chatglm_adapter if (path / "adapter_config.json").exists() else convert_chatglm_ptuning
        )
        log.info("mapping ChatGLM-layout adapter %s onto the converted model", path)
        convert(path, target, source.path)
    return target


def attach_adapter(model: Any, adapter: str | Path) -> Any:
    """The model with a PEFT adapter (LoRA, AdaLoRA, P-Tuning v2 prefix) attached for inference."""
    path = Path(adapter).expanduser()
    if not (path / "adapter_config.json").exists():
        if (path / "rejected" / "adapter_config.json").exists():
            raise ModelNotFoundError(
                f"{path}: chatforge learn's retention check rejected this adapter (see "
                f"{path / 'learn_report.json'}); it is kept in {path / 'rejected'}: pass that to use it anyway"
            )
        raise ModelNotFoundError(f"{path} is not an adapter directory (no adapter_config.json)")
    from peft import PeftModel

    log.info("attaching adapter %s", path)
    return PeftModel.from_pretrained(model, path, is_trainable=False).eval()
