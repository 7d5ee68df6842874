"""Export a fine-tuning result as a standalone Hugging Face model directory.

LoRA and AdaLoRA adapters are merged into the base weights (``W + scale · B @ A``)
and saved as safetensors with the tokenizer, chat template and generation config,
loadable by ``chatforge.load_model(dir)`` and by plain transformers. P-Tuning v2
prefixes live in the attention cache, not in any weight, so they cannot be merged:
serve them with ``--model BASE --adapter DIR``. The output is written to a temporary
directory and renamed, so it is complete or absent.

With ``gguf=True`` the directory also gets ``model-<type>.gguf`` for the llama.cpp and
hybrid engines, written with the base model's GGUF as the template for its metadata and
tokenizer (:mod:`chatforge.models.gguf.export`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from chatforge.models.device import DTYPES
from chatforge.models.embedded import assemble_gguf, find_embedded
from chatforge.models.gguf.export import GGUF_TYPES, write_gguf
from chatforge.models.loader import load_weights, resolve
from chatforge.train.checkpoints import TRAIN_INFO

log = logging.getLogger(__name__)


class ExportError(ValueError):
    """The result cannot be exported as asked; the text says what to do instead."""


def read_train_info(adapter_dir: Path) -> dict[str, Any]:
    path = adapter_dir / TRAIN_INFO
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def merge_adapter(base_model: Any, adapter_dir: str | Path) -> Any:
    """The base model with a LoRA/AdaLoRA adapter merged in (a plain transformers model)."""
    from peft import PeftConfig, PeftModel

    adapter_dir = Path(adapter_dir)
    peft_type = str(PeftConfig.from_pretrained(adapter_dir).peft_type).split(".")[-1].upper()
    if peft_type not in ("LORA", "ADALORA"):
        raise ExportError(
            f"{adapter_dir}: a {peft_type} adapter cannot be merged into the weights "
            "(P-Tuning v2 prefixes live in the attention cache). Serve it as an adapter: "
            f"chatforge serve --model BASE --adapter {adapter_dir}"
        )
    model = PeftModel.from_pretrained(base_model, adapter_dir)
    return model.merge_and_unload()


def export(
    result_dir: str | Path,
    output: str | Path,
    base_model: str | None = None,
    dtype: str = "auto",
    gguf: bool = False,
    gguf_type: str = "q4_k_m",
    gguf_template: str | Path | None = None,
) -> Path:
    """Write a standalone model for ``result_dir`` (a ``final/`` adapter or full model) to ``output``."""
    src, out = Path(result_dir), Path(output)
    if gguf and gguf_type not in GGUF_TYPES:
        raise ExportError(f"--gguf-type {gguf_type!r}: use one of {', '.join(GGUF_TYPES)}")
    if not src.is_dir():
        raise ExportError(f"{src} is not a directory (expected a training output's final/ directory)")
    if out.exists():
        raise ExportError(f"{out} already exists; remove it or choose another --output")
    info = read_train_info(src)
    base_ref = base_model or info.get("base_model")
    template = _gguf_template(gguf_template, base_ref) if gguf else None
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    merged = None
    if (src / "adapter_config.json").exists():
        if not base_ref:
            raise ExportError(f"{src}: which base model? pass --base-model (no {TRAIN_INFO} records it)")
        source = resolve(base_ref)
        # Merge in float32 (exact W + scale·B@A), then store in the base's own dtype.
        model, _ = load_weights(source, device="cpu", dtype="float32")
        _make_serializable(model)
        merged = merge_adapter(model, src)
        merged.to(_target_dtype(dtype, source.path))
        merged.save_pretrained(tmp, safe_serialization=True)
        tokenizer_src = src
    elif (src / "config.json").exists():
        shutil.copytree(src, tmp)  # full fine-tuning already saved a standalone model
        tokenizer_src = None
    else:
        raise ExportError(f"{src}: neither an adapter (adapter_config.json) nor a model (config.json)")
    if tokenizer_src is not None:
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(tokenizer_src, local_files_only=True).save_pretrained(tmp)
    if template is not None:
        if merged is None:
            merged, _ = load_weights(resolve(tmp), device="cpu", dtype="float32")
        write_gguf(merged, template, tmp / f"model-{gguf_type}.gguf", gguf_type)
    (tmp / TRAIN_INFO).write_text(
        json.dumps({**info, "exported_from": str(src), "kind": "merged"}, indent=2), encoding="utf-8"
    )
    tmp.rename(out)
    log.info("exported a standalone model to %s", out)
    return out


def _gguf_template(given: str | Path | None, base_ref: str | None) -> Path:
    """The base model's GGUF file, whose metadata and tokenizer the exported GGUF reuses."""
    if given is not None:
        path = Path(given).expanduser()
        if not path.is_file() or path.suffix.lower() != ".gguf":
            raise ExportError(f"--gguf-template {path}: not a .gguf file")
        return path
    spec = find_embedded(base_ref) if base_ref else None
    if spec is not None:
        return assemble_gguf(spec)
    if base_ref:
        path = Path(base_ref).expanduser()
        if path.is_file() and path.suffix.lower() == ".gguf":
            return path
        ggufs = sorted(path.glob("*.gguf")) if path.is_dir() else []
        if len(ggufs) == 1:
            return ggufs[0]
    raise ExportError(
        f"GGUF export reuses the base model's GGUF file for its tokenizer and metadata, and "
        f"{base_ref!r} has none: pass --gguf-template BASE.gguf (the same model as a GGUF file)"
    )


def _target_dtype(dtype: str, base_path: Path) -> torch.dtype:
    if dtype != "auto":
        if dtype not in DTYPES:
            raise ExportError(f"--dtype {dtype!r}: use auto, float32, bfloat16 or float16")
        return DTYPES[dtype]
    config = base_path / "config.json" if base_path.is_dir() else None
    if config is not None and config.exists():
        raw = json.loads(config.read_text(encoding="utf-8"))
        name = str(raw.get("dtype") or raw.get("torch_dtype") or "float32")
        return DTYPES.get(name, torch.float32)
    return torch.bfloat16  # a GGUF base: its weights were quantised; bf16 keeps the merged size sane


def _make_serializable(model: Any) -> None:
    # A model dequantized from GGUF refuses save_pretrained; its weights are dense now.
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
