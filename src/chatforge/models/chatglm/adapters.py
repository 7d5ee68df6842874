"""Adapters trained on the original ChatGLM2/3 layout, mapped onto the converted GLM model.

A LoRA/AdaLoRA adapter trained on ``query_key_value`` (fused) or ``dense_h_to_4h`` is split
like the weights it adapts (see :mod:`chatforge.models.chatglm.convert`); a P-Tuning v2 prefix
encoder becomes a PEFT prefix-tuning adapter whose keys are rotated to GLM's rotary layout.

Public API: :func:`map_chatglm_adapter_state_dict`, :func:`map_chatglm_module_names`,
:func:`convert_chatglm_adapter`, :func:`convert_chatglm_ptuning`, :func:`is_chatglm_layout_adapter`.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from chatforge.models.chatglm.config import ChatGLMConfig, ChatGLMConversionError, read_chatglm_config
from chatforge.models.chatglm.convert import CONVERSION_INFO_FILE, chatglm_variant_of
from chatforge.models.chatglm.weights import _SHORT_NAMES, _load_shard, _map_name

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------------
# Adapters trained on the original layout
# --------------------------------------------------------------------------------------------------

# Tensors of a fused-module adapter that are per output row (split like the weight) or shared.
_ROW_SUFFIXES = ("lora_B", "lora_magnitude_vector", "weight", "bias", "modules_to_save", "original_module")
_SHARED_SUFFIXES = ("lora_A", "lora_E", "ranknum")


def _chatglm_config_from(source: ChatGLMConfig | Mapping[str, Any] | str | Path) -> ChatGLMConfig:
    if isinstance(source, ChatGLMConfig):
        return source
    if isinstance(source, Mapping):
        return ChatGLMConfig.from_dict(source, source="config")
    info = Path(source) / CONVERSION_INFO_FILE
    if info.is_file():  # a converted directory remembers the original config
        return ChatGLMConfig(**json.loads(info.read_text(encoding="utf-8"))["chatglm_config"])
    return read_chatglm_config(source)[0]


def map_chatglm_adapter_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    config: ChatGLMConfig | Mapping[str, Any] | str | Path,
) -> dict[str, torch.Tensor]:
    """Rename a PEFT adapter state dict trained on the original ChatGLM layout to the GLM layout.

    ``config`` is the base checkpoint's :class:`ChatGLMConfig`, its raw config dict, the original
    checkpoint directory or the converted directory (needed to split ``query_key_value``). Per-row
    tensors of the fused QKV projection (LoRA B, its bias, DoRA magnitudes, saved module copies) are
    split into q/k/v rows; LoRA A (and AdaLoRA's E and rank count) are shared, so each of q/k/v gets a
    copy. The result equals the original adapter exactly: each row of ``B @ A`` is unchanged.
    """
    chatglm_config = _chatglm_config_from(config)
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        mapped = _map_name(key)
        if mapped is None:
            if "prefix_encoder" in key or "prompt_encoder" in key:
                raise ChatGLMConversionError(
                    f"adapter tensor {key}: a P-Tuning v2 prefix; convert it with convert_chatglm_ptuning"
                )
            out[key] = tensor
            continue
        if not mapped.fused:
            out[mapped.keys()[0]] = tensor
            continue
        kind = mapped.suffix.lstrip(".").split(".", 1)[0]
        if kind in _SHARED_SUFFIXES:
            parts: tuple[torch.Tensor, ...] = (tensor.clone(), tensor.clone(), tensor.clone())
        elif kind in _ROW_SUFFIXES:
            parts = chatglm_config.split_qkv(tensor)
        else:
            raise ChatGLMConversionError(
                f"adapter tensor {key}: cannot split {kind!r} of the fused query_key_value projection "
                "(LoRA, AdaLoRA and DoRA tensors are supported)"
            )
        out.update(zip(mapped.keys(), parts, strict=True))
    return out


def map_chatglm_module_names(names: str | list[str] | None) -> str | list[str] | None:
    """Map PEFT ``target_modules``/``modules_to_save`` names of the original layout to GLM names."""
    if names is None:
        return None
    if isinstance(names, str):
        if names == "all-linear":
            return names
        # A regular expression: rewrite the names it mentions (word boundaries keep dense_h_to_4h intact).
        pattern = names.replace("transformer.encoder.layers", "model.layers").replace(
            "self_attention", "self_attn"
        )
        for old, new in _SHORT_NAMES.items():
            pattern = re.sub(rf"\b{old}\b", new[0] if len(new) == 1 else f"({'|'.join(new)})", pattern)
        if pattern != names:
            logger.warning(
                "rewrote target_modules regex %r to %r; check it matches what you trained", names, pattern
            )
        return pattern
    mapped: list[str] = []
    for name in names:
        full = _map_name(name)
        if full is not None:
            mapped += full.keys()
        else:
            mapped += _SHORT_NAMES.get(name, (name,))
    return list(dict.fromkeys(mapped))


def _map_pattern_dict(patterns: Mapping[str, Any] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in (patterns or {}).items():
        full = _map_name(key)
        new_keys = full.keys() if full is not None else list(_SHORT_NAMES.get(key, (key,)))
        out.update(dict.fromkeys(new_keys, value))
    return out


def convert_chatglm_adapter(
    src_dir: str | Path,
    dst_dir: str | Path,
    base: ChatGLMConfig | Mapping[str, Any] | str | Path,
    base_model_name_or_path: str | None = None,
) -> Path:
    """Convert a PEFT adapter directory trained on the original layout into one for the GLM layout.

    Reads ``adapter_config.json`` and ``adapter_model.safetensors`` (or ``adapter_model.bin``), maps
    ``target_modules``, ``modules_to_save``, ``rank_pattern`` and ``alpha_pattern`` and the tensors
    (see :func:`map_chatglm_adapter_state_dict`), and writes ``adapter_model.safetensors``.
    ``base`` is the original checkpoint or its conversion; ``base_model_name_or_path`` is recorded
    in the new config (default: the converted directory when ``base`` is one, else unchanged).
    """
    from safetensors.torch import load_file

    src_dir, dst_dir = Path(src_dir).expanduser(), Path(dst_dir).expanduser()
    config_path = src_dir / "adapter_config.json"
    try:
        adapter_config = json.loads(config_path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ChatGLMConversionError(f"{config_path}: not found (is {src_dir} a PEFT adapter?)") from exc
    peft_type = str(adapter_config.get("peft_type", "")).upper()
    if peft_type not in ("LORA", "ADALORA"):
        raise ChatGLMConversionError(
            f"{config_path}: peft_type {peft_type!r} is not mapped (LORA, ADALORA are)"
        )
    if (src_dir / "adapter_model.safetensors").is_file():
        state = load_file(str(src_dir / "adapter_model.safetensors"))
    elif (src_dir / "adapter_model.bin").is_file():
        state = torch.load(src_dir / "adapter_model.bin", map_location="cpu", weights_only=True)
    else:
        raise ChatGLMConversionError(f"{src_dir}: no adapter_model.safetensors or adapter_model.bin")

    mapped_state = map_chatglm_adapter_state_dict(state, base)
    adapter_config["target_modules"] = map_chatglm_module_names(adapter_config.get("target_modules"))
    adapter_config["modules_to_save"] = map_chatglm_module_names(adapter_config.get("modules_to_save"))
    for field_name in ("rank_pattern", "alpha_pattern"):
        if adapter_config.get(field_name):
            adapter_config[field_name] = _map_pattern_dict(adapter_config[field_name])
    if base_model_name_or_path is None and isinstance(base, str | Path) and chatglm_variant_of(base):
        base_model_name_or_path = str(Path(base).resolve())
    if base_model_name_or_path is not None:
        adapter_config["base_model_name_or_path"] = base_model_name_or_path

    dst_dir.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: v.contiguous() for k, v in mapped_state.items()}, str(dst_dir / "adapter_model.safetensors")
    )
    (dst_dir / "adapter_config.json").write_text(json.dumps(adapter_config, indent=2), encoding="utf-8")
    logger.info("mapped %d adapter tensors from %s to %s", len(mapped_state), src_dir, dst_dir)
    return dst_dir


_PREFIX_ENCODER = "transformer.prefix_encoder."


def _read_prefix_encoder(src: Path) -> dict[str, torch.Tensor]:
    files = [src] if src.is_file() else sorted(src.glob("*.safetensors")) + sorted(src.glob("*.bin"))
    found: dict[str, torch.Tensor] = {}
    for path in files:
        found |= {
            k.removeprefix(_PREFIX_ENCODER): v
            for k, v in _load_shard(path).items()
            if k.startswith(_PREFIX_ENCODER)
        }
    if "embedding.weight" not in found:
        raise ChatGLMConversionError(
            f"{src}: no {_PREFIX_ENCODER}embedding.weight found (expected a ChatGLM P-Tuning v2 checkpoint)"
        )
    return found


def _rotate_keys_to(keys: torch.Tensor, position: int, theta: float) -> torch.Tensor:
    """Rotate keys [..., head_dim] as ChatGLM's rotary embedding would at ``position``."""
    head_dim = keys.shape[-1]
    rotary = head_dim // 2
    freqs = theta ** (-torch.arange(0, rotary, 2, dtype=torch.float64) / rotary)
    cos, sin = torch.cos(position * freqs), torch.sin(position * freqs)
    even, odd = keys[..., 0:rotary:2], keys[..., 1:rotary:2]
    out = keys.clone()
    out[..., 0:rotary:2] = even * cos - odd * sin
    out[..., 1:rotary:2] = odd * cos + even * sin
    return out


def convert_chatglm_ptuning(
    src: str | Path,
    dst_dir: str | Path,
    base: ChatGLMConfig | Mapping[str, Any] | str | Path,
    base_model_name_or_path: str | None = None,
) -> Path:
    """Convert a ChatGLM P-Tuning v2 checkpoint (``transformer.prefix_encoder.*``) to a PEFT prefix adapter.

    ChatGLM feeds the prefix as extra past keys/values without rotary embedding and numbers the real
    tokens from 0; transformers numbers them from the prefix length P. Rotary attention depends only
    on the difference of positions, so rotating each prefix key to position P gives the same scores.
    A prefix trained with ``prefix_projection`` is evaluated through its MLP once and stored as a
    plain prefix (exact for inference; training would continue without the reparametrisation).
    """
    from peft import PrefixTuningConfig

    src, dst_dir = Path(src).expanduser(), Path(dst_dir).expanduser()
    config = _chatglm_config_from(base)
    weights = _read_prefix_encoder(src)
    embedding = weights["embedding.weight"]
    dtype = embedding.dtype
    prefix = embedding.to(torch.float64)
    if "trans.0.weight" in weights:  # prefix_projection: Linear -> Tanh -> Linear
        w0, b0 = weights["trans.0.weight"].double(), weights["trans.0.bias"].double()
        w2, b2 = weights["trans.2.weight"].double(), weights["trans.2.bias"].double()
        prefix = torch.tanh(prefix @ w0.T + b0) @ w2.T + b2
    num_virtual_tokens = prefix.shape[0]
    groups, head_dim = config.num_key_value_heads, config.kv_channels
    expected = config.num_layers * 2 * groups * head_dim
    if prefix.shape[1] != expected:
        raise ChatGLMConversionError(
            f"{src}: prefix width {prefix.shape[1]} does not match the base model "
            f"(num_layers * 2 * kv groups * kv_channels = {expected})"
        )
    kv = prefix.reshape(num_virtual_tokens, config.num_layers * 2, groups, head_dim)
    kv[:, 0::2] = _rotate_keys_to(kv[:, 0::2], num_virtual_tokens, config.rope_theta)
    if base_model_name_or_path is None and isinstance(base, str | Path) and chatglm_variant_of(base):
        base_model_name_or_path = str(Path(base).resolve())
    peft_config = PrefixTuningConfig(
        task_type="CAUSAL_LM",
        num_virtual_tokens=num_virtual_tokens,
        token_dim=groups * head_dim,
        num_attention_heads=groups,
        num_layers=config.num_layers,
        encoder_hidden_size=groups * head_dim,
        prefix_projection=False,
        inference_mode=True,
        base_model_name_or_path=base_model_name_or_path,
    )
    dst_dir.mkdir(parents=True, exist_ok=True)
    peft_config.save_pretrained(str(dst_dir))
    save_file(
        {"prompt_embeddings": kv.reshape(num_virtual_tokens, expected).to(dtype).contiguous()},
        str(dst_dir / "adapter_model.safetensors"),
    )
    logger.info("converted P-Tuning v2 prefix (%d tokens) from %s to %s", num_virtual_tokens, src, dst_dir)
    return dst_dir


def is_chatglm_layout_adapter(path: str | Path) -> bool:
    """True if ``path`` holds an adapter for the original ChatGLM layout (PEFT LoRA/AdaLoRA or a P-Tuning
    v2 prefix checkpoint), which must be mapped before it attaches to the converted model."""
    path = Path(path)
    config_path = path / "adapter_config.json"
    if config_path.is_file():
        try:
            doc = json.loads(config_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return False
        targets = doc.get("target_modules") or []
        names = [targets] if isinstance(targets, str) else list(targets)
        return any(re.search(r"query_key_value|dense_h_to_4h|dense_4h_to_h|self_attention", n) for n in names)
    if not path.is_dir():
        return False
    for weights in sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin")):
        try:
            keys = _load_shard(weights).keys()
        except ChatGLMConversionError:
            continue
        return any(k.startswith(_PREFIX_ENCODER) for k in keys)
    return False
