"""ChatGLM2/3 weights: their names in the GLM layout, the shapes expected, and reading the shards.

Maps module paths of the published layout to ``GlmForCausalLM`` names (the table is in
:mod:`chatforge.models.chatglm.convert`), splitting the fused ``query_key_value``; lists every weight a
converted model must have with its shape; finds a checkpoint's weight files and reads them
(safetensors, or ``.bin`` without unpickling arbitrary objects). Adapters reuse the same names
(:mod:`chatforge.models.chatglm.adapters`).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from chatforge.models.chatglm.config import ChatGLMConfig, ChatGLMConversionError

# One logger for the ChatGLM conversion, as before it was split into modules.
logger = logging.getLogger("chatforge.models.chatglm.convert")


# --------------------------------------------------------------------------------------------------
# Names
# --------------------------------------------------------------------------------------------------

_QKV = "self_attention.query_key_value"
_QKV_TARGETS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
_LAYER_MODULES = {
    "input_layernorm": ("input_layernorm",),
    _QKV: _QKV_TARGETS,
    "self_attention.dense": ("self_attn.o_proj",),
    "post_attention_layernorm": ("post_attention_layernorm",),
    "mlp.dense_h_to_4h": ("mlp.gate_up_proj",),
    "mlp.dense_4h_to_h": ("mlp.down_proj",),
}
_GLOBAL_MODULES = {
    "transformer.embedding.word_embeddings": ("model.embed_tokens",),
    "transformer.encoder.final_layernorm": ("model.norm",),
    "transformer.output_layer": ("lm_head",),
}
# A module path of the original layout, anywhere in a key (adapter keys carry a "base_model.model." prefix).
_MODULE_RE = re.compile(
    r"transformer\.(?:embedding\.word_embeddings|encoder\.final_layernorm|output_layer"
    r"|encoder\.layers\.(?P<layer>\d+)\.(?P<sub>" + "|".join(re.escape(m) for m in _LAYER_MODULES) + r"))"
    r"(?=\.|$)"
)
# Short module names as PEFT's target_modules use them.
_SHORT_NAMES = {
    "query_key_value": ("q_proj", "k_proj", "v_proj"),
    "dense": ("o_proj",),
    "dense_h_to_4h": ("gate_up_proj",),
    "dense_4h_to_h": ("down_proj",),
    "word_embeddings": ("embed_tokens",),
    "final_layernorm": ("norm",),
    "output_layer": ("lm_head",),
}
# Buffers/weights in published checkpoints that the GLM model does not need.
_IGNORED_WEIGHTS = ("transformer.rotary_pos_emb.inv_freq",)
_IGNORED_PREFIXES = ("transformer.prefix_encoder.",)


@dataclass(frozen=True)
class _MappedName:
    prefix: str
    targets: tuple[str, ...]
    suffix: str

    @property
    def fused(self) -> bool:
        return len(self.targets) > 1

    def keys(self) -> list[str]:
        return [f"{self.prefix}{target}{self.suffix}" for target in self.targets]


def _map_name(key: str) -> _MappedName | None:
    """Where an original-layout module path inside ``key`` goes in the GLM layout, or None."""
    match = _MODULE_RE.search(key)
    if match is None:
        return None
    if match.group("layer") is not None:
        layer = f"model.layers.{match.group('layer')}."
        targets = tuple(layer + t for t in _LAYER_MODULES[match.group("sub")])
    else:
        targets = _GLOBAL_MODULES[match.group(0)]
    return _MappedName(key[: match.start()], targets, key[match.end() :])


def expected_glm_shapes(config: ChatGLMConfig) -> dict[str, tuple[int, ...]]:
    """Every weight of the converted ``GlmForCausalLM`` and its shape."""
    h, f = config.hidden_size, config.ffn_hidden_size
    q_rows, kv_rows, _ = config.qkv_rows
    shapes: dict[str, tuple[int, ...]] = {
        "model.embed_tokens.weight": (config.padded_vocab_size, h),
        "model.norm.weight": (h,),
        "lm_head.weight": (config.padded_vocab_size, h),
    }
    for i in range(config.num_layers):
        p = f"model.layers.{i}."
        shapes |= {
            p + "input_layernorm.weight": (h,),
            p + "post_attention_layernorm.weight": (h,),
            p + "self_attn.q_proj.weight": (q_rows, h),
            p + "self_attn.k_proj.weight": (kv_rows, h),
            p + "self_attn.v_proj.weight": (kv_rows, h),
            p + "self_attn.o_proj.weight": (h, q_rows),
            p + "mlp.gate_up_proj.weight": (2 * f, h),
            p + "mlp.down_proj.weight": (h, f),
        }
        if config.add_qkv_bias:
            shapes |= {
                p + "self_attn.q_proj.bias": (q_rows,),
                p + "self_attn.k_proj.bias": (kv_rows,),
                p + "self_attn.v_proj.bias": (kv_rows,),
            }
    return shapes


def map_chatglm_weights(
    weights: Mapping[str, torch.Tensor], config: ChatGLMConfig, source: str = "checkpoint"
) -> dict[str, torch.Tensor]:
    """Rename (and split) original-layout weights to GLM names; unknown names raise, naming ``source``."""
    out: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for key, tensor in weights.items():
        if key in _IGNORED_WEIGHTS:
            continue
        if key.startswith(_IGNORED_PREFIXES):
            logger.warning(
                "%s: skipping %s (P-Tuning v2 prefix encoder; not part of the base model)", source, key
            )
            continue
        mapped = _map_name(key)
        if mapped is None or mapped.prefix or mapped.suffix not in (".weight", ".bias"):
            unknown.append(key)
            continue
        try:
            parts = config.split_qkv(tensor) if mapped.fused else (tensor,)
        except ChatGLMConversionError as exc:
            raise ChatGLMConversionError(f"{source}: {key}: {exc}") from exc
        out.update(zip(mapped.keys(), parts, strict=True))
    if unknown:
        raise ChatGLMConversionError(f"{source}: unexpected weights for a ChatGLM2/3 model: {unknown[:8]}")
    return out


def _original_names(glm_keys: list[str]) -> list[str]:
    names = []
    for key in glm_keys:
        for original, targets in _GLOBAL_MODULES.items():
            if key.startswith(targets[0] + "."):
                names.append(original + key[len(targets[0]) :])
        match = re.match(r"model\.layers\.(\d+)\.(.+)\.(weight|bias)$", key)
        if match:
            for sub, targets in _LAYER_MODULES.items():
                if match.group(2) in targets:
                    names.append(f"transformer.encoder.layers.{match.group(1)}.{sub}.{match.group(3)}")
    return names


# --------------------------------------------------------------------------------------------------
# Reading checkpoints
# --------------------------------------------------------------------------------------------------


def checkpoint_shards(src_dir: str | Path) -> list[Path]:
    """The weight files of a checkpoint: safetensors preferred, then ``.bin``; sharded via index files."""
    src_dir = Path(src_dir)
    for index_name, single_name in (
        ("model.safetensors.index.json", "model.safetensors"),
        ("pytorch_model.bin.index.json", "pytorch_model.bin"),
    ):
        index = src_dir / index_name
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            except (json.JSONDecodeError, KeyError) as exc:
                raise ChatGLMConversionError(f"{index}: not a valid index file (needs 'weight_map')") from exc
            shards = [src_dir / name for name in dict.fromkeys(weight_map.values())]
            missing = [str(s) for s in shards if not s.is_file()]
            if missing:
                raise ChatGLMConversionError(f"{index}: lists shard files that do not exist: {missing}")
            return shards
        if (src_dir / single_name).is_file():
            return [src_dir / single_name]
    loose = sorted(src_dir.glob("*.safetensors")) or sorted(src_dir.glob("pytorch_model*.bin"))
    if loose:
        return loose
    raise ChatGLMConversionError(f"{src_dir}: no weights found (pytorch_model*.bin or *.safetensors)")


def _load_shard(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
    # weights_only: never unpickle arbitrary objects; mmap: do not hold a second copy in memory
    # (the legacy, non-zip format cannot be memory-mapped, so it is read without).
    try:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ChatGLMConversionError(f"{path}: cannot read weights safely ({exc})") from exc
    if not isinstance(state, dict):
        raise ChatGLMConversionError(f"{path}: expected a state dict, found {type(state).__name__}")
    return state
