"""ChatGLM2/ChatGLM3 checkpoints on transformers' native GLM architecture, without remote code.

A published ChatGLM2/3 directory (``config.json`` with ``model_type: chatglm``, ``pytorch_model-*.bin``
or safetensors shards, ``tokenizer.model``) needs ``trust_remote_code=True`` to load. Its architecture is
the one transformers ships as ``GlmForCausalLM`` (model_type ``glm``), so this module converts the
directory once into a standard Hugging Face directory and loads that:

============================================================  ======================================
ChatGLM (published layout)                                     GLM (transformers)
============================================================  ======================================
``transformer.embedding.word_embeddings``                      ``model.embed_tokens``
``transformer.encoder.layers.N.input_layernorm``               ``model.layers.N.input_layernorm``
``...self_attention.query_key_value`` (fused, MQA groups)      ``...self_attn.{q,k,v}_proj`` (split)
``...self_attention.dense``                                    ``...self_attn.o_proj``
``...post_attention_layernorm``                                ``...post_attention_layernorm``
``...mlp.dense_h_to_4h`` (SwiGLU halves: gate, up)             ``...mlp.gate_up_proj`` (same order)
``...mlp.dense_4h_to_h``                                       ``...mlp.down_proj``
``transformer.encoder.final_layernorm``                        ``model.norm``
``transformer.output_layer``                                   ``lm_head``
============================================================  ======================================

The rest maps one to one: RMSNorm, QKV bias only (``attention_bias``), rotary embedding on the first
half of each head's dimensions with interleaved pairs (GLM's ``partial_rotary_factor=0.5`` and its
interleaved ``rotate_half``), base ``10000 * rope_ratio``. ``tests/models/test_chatglm.py`` checks the
converted model against an independent reference forward pass written from ChatGLM's description.

Public API: :func:`is_chatglm_checkpoint`, :func:`convert_chatglm`, :func:`load_chatglm`. Adapters
trained on the original layout: :mod:`chatforge.models.chatglm_adapters`; the command line:
:mod:`chatforge.models.chatglm_cli`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from chatforge.models.chatglm_tokenizer import (
    CHATGLM3_ROLE_TOKENS,
    ChatGLMTokenizerError,
    build_chatglm_tokenizer,
    special_tokens_for,
)

logger = logging.getLogger(__name__)

# Bump when the converted output changes, so cached conversions are redone.
CONVERTER_VERSION = 1
CONVERSION_INFO_FILE = "chatforge_conversion.json"
SAFE_WEIGHTS_INDEX = "model.safetensors.index.json"

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


class ChatGLMConversionError(ValueError):
    """A ChatGLM checkpoint that cannot be converted; the message names the file and field or weight."""


# --------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChatGLMConfig:
    """The architecture fields of a ChatGLM2/3 ``config.json`` that the conversion needs.

    Missing fields take the defaults of ChatGLM's own configuration class, as remote code would.
    """

    num_layers: int
    hidden_size: int
    ffn_hidden_size: int
    kv_channels: int
    num_attention_heads: int
    multi_query_attention: bool
    multi_query_group_num: int
    padded_vocab_size: int
    seq_length: int
    layernorm_epsilon: float
    rope_ratio: float
    add_qkv_bias: bool
    name_or_path: str = ""

    @property
    def num_key_value_heads(self) -> int:
        return self.multi_query_group_num if self.multi_query_attention else self.num_attention_heads

    @property
    def qkv_rows(self) -> tuple[int, int, int]:
        """Output rows of the query, key and value parts of ``query_key_value``."""
        kv = self.num_key_value_heads * self.kv_channels
        return self.num_attention_heads * self.kv_channels, kv, kv

    @property
    def rope_theta(self) -> float:
        return 10000.0 * self.rope_ratio

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], source: str = "config.json") -> ChatGLMConfig:
        """Validate a ChatGLM ``config.json``; unsupported variants raise naming the field."""

        def fail(message: str) -> ChatGLMConversionError:
            return ChatGLMConversionError(f"{source}: {message}")

        if raw.get("model_type") != "chatglm":
            raise fail(f"model_type is {raw.get('model_type')!r}, expected 'chatglm'")
        if "position_encoding_2d" in raw or "inner_hidden_size" in raw:
            raise fail(
                "this is a first-generation ChatGLM-6B checkpoint (2D position encoding); "
                "only ChatGLM2 and ChatGLM3 checkpoints can be converted"
            )
        # Variants the GLM architecture cannot express, with the field that selects them.
        unsupported = {
            "rmsnorm": (True, "LayerNorm instead of RMSNorm"),
            "add_bias_linear": (False, "biases on the dense/MLP projections"),
            "apply_residual_connection_post_layernorm": (False, "residual taken after the layer norm"),
            "post_layer_norm": (True, "no final layer norm"),
        }
        for field_name, (supported, what) in unsupported.items():
            if bool(raw.get(field_name, supported)) != supported:
                raise fail(
                    f"{field_name}={raw[field_name]!r} ({what}) is not supported by the GLM architecture"
                )
        if raw.get("quantization_bit") not in (None, 0):
            raise fail(
                f"quantization_bit={raw['quantization_bit']} (a pre-quantized checkpoint) is not supported; "
                "convert the full-precision checkpoint and quantize after loading"
            )
        if raw.get("pre_seq_len"):
            logger.warning(
                "%s: pre_seq_len=%s (P-Tuning v2 prefix) is ignored; the prefix encoder is not converted",
                source,
                raw["pre_seq_len"],
            )

        try:
            hidden_size = int(raw.get("hidden_size", 4096))
            num_heads = int(raw.get("num_attention_heads", 32))
            config = cls(
                num_layers=int(raw.get("num_layers", 28)),
                hidden_size=hidden_size,
                ffn_hidden_size=int(raw.get("ffn_hidden_size", 13696)),
                kv_channels=int(raw.get("kv_channels") or hidden_size // num_heads),
                num_attention_heads=num_heads,
                multi_query_attention=bool(raw.get("multi_query_attention", False)),
                multi_query_group_num=int(raw.get("multi_query_group_num", 1)),
                padded_vocab_size=int(raw.get("padded_vocab_size") or raw.get("vocab_size") or 65024),
                seq_length=int(raw.get("seq_length", 2048)),
                layernorm_epsilon=float(raw.get("layernorm_epsilon", 1e-5)),
                rope_ratio=float(raw.get("rope_ratio", 1.0)),
                add_qkv_bias=bool(raw.get("add_qkv_bias", False)),
                name_or_path=str(raw.get("_name_or_path", "")),
            )
        except (TypeError, ValueError) as exc:
            raise fail(f"a numeric field has an invalid value ({exc})") from exc
        if config.kv_channels % 4:
            raise fail(
                f"kv_channels={config.kv_channels} must be a multiple of 4 (rotary pairs on half the dims)"
            )
        if config.num_attention_heads % config.num_key_value_heads:
            raise fail(
                f"num_attention_heads={config.num_attention_heads} is not a multiple of "
                f"multi_query_group_num={config.multi_query_group_num}"
            )
        return config

    def split_qkv(self, fused: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Split a fused ``query_key_value`` tensor (weight, bias or LoRA B) along its output rows.

        With multi-query attention the rows are [all query heads | key groups | value groups]; without
        it ChatGLM interleaves them per head: [q_0 k_0 v_0 | q_1 k_1 v_1 | ...].
        """
        q_rows, kv_rows, _ = self.qkv_rows
        expected = q_rows + 2 * kv_rows
        if fused.shape[0] != expected:
            raise ChatGLMConversionError(
                f"query_key_value has {fused.shape[0]} output rows, expected {expected} from the config"
            )
        if self.multi_query_attention:
            q, k, v = torch.split(fused, [q_rows, kv_rows, kv_rows], dim=0)
        else:
            per_head = fused.reshape(self.num_attention_heads, 3, self.kv_channels, *fused.shape[1:])
            q, k, v = (per_head[:, i].reshape(q_rows, *fused.shape[1:]) for i in range(3))
        return q.clone(), k.clone(), v.clone()

    def to_glm_config(self, eos_token_id: list[int], dtype: torch.dtype | None = None) -> Any:
        """The equivalent ``transformers.GlmConfig``."""
        from transformers import GlmConfig

        return GlmConfig(
            vocab_size=self.padded_vocab_size,
            hidden_size=self.hidden_size,
            intermediate_size=self.ffn_hidden_size,
            num_hidden_layers=self.num_layers,
            num_attention_heads=self.num_attention_heads,
            num_key_value_heads=self.num_key_value_heads,
            head_dim=self.kv_channels,
            hidden_act="silu",
            attention_dropout=0.0,
            max_position_embeddings=self.seq_length,
            rms_norm_eps=self.layernorm_epsilon,
            tie_word_embeddings=False,
            # ChatGLM rotates the first kv_channels/2 dims of each head, in interleaved pairs.
            rope_parameters={
                "rope_type": "default",
                "rope_theta": self.rope_theta,
                "partial_rotary_factor": 0.5,
            },
            attention_bias=self.add_qkv_bias,
            pad_token_id=0,
            bos_token_id=None,
            eos_token_id=eos_token_id,
            architectures=["GlmForCausalLM"],
            dtype=dtype,
        )


def eos_token_ids(variant: str, n_pieces: int = 64789) -> list[int]:
    """Generation stops at ``</s>`` (id 2) and, for ChatGLM3, at ``<|user|>`` and ``<|observation|>``."""
    if variant != "chatglm3":
        return [2]
    specials = special_tokens_for(variant)
    return [2, n_pieces + specials.index("<|user|>"), n_pieces + specials.index("<|observation|>")]


def read_chatglm_config(src_dir: str | Path) -> tuple[ChatGLMConfig, dict[str, Any]]:
    """The validated config of a ChatGLM checkpoint directory and its raw ``config.json``."""
    path = Path(src_dir) / "config.json"
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ChatGLMConversionError(
            f"{path}: not found (is {src_dir} a ChatGLM checkpoint directory?)"
        ) from exc
    except json.JSONDecodeError as exc:
        raise ChatGLMConversionError(f"{path}: invalid JSON ({exc})") from exc
    return ChatGLMConfig.from_dict(raw, source=str(path)), raw


def is_chatglm_checkpoint(path: str | Path) -> bool:
    """True if ``path`` is a directory whose ``config.json`` says ``model_type: chatglm``."""
    config_path = Path(path) / "config.json"
    if not config_path.is_file():
        return False
    try:
        return json.loads(config_path.read_text(encoding="utf-8")).get("model_type") == "chatglm"
    except (OSError, json.JSONDecodeError, AttributeError):
        return False


def detect_chatglm_variant(src_dir: str | Path, raw_config: Mapping[str, Any] | None = None) -> str:
    """``"chatglm3"`` or ``"chatglm2"``: which special tokens and chat format the checkpoint uses.

    Read (never executed) from the shipped ``tokenization_chatglm.py`` (ChatGLM3's defines the role
    tokens), else from ``_name_or_path`` in the config, else ChatGLM3.
    """
    src_dir = Path(src_dir)
    tokenizer_code = src_dir / "tokenization_chatglm.py"
    if tokenizer_code.is_file():
        text = tokenizer_code.read_text(encoding="utf-8", errors="replace")
        return "chatglm3" if "<|observation|>" in text else "chatglm2"
    name = str((raw_config or {}).get("_name_or_path", "")).lower() or src_dir.name.lower()
    if "chatglm2" in name:
        return "chatglm2"
    if "chatglm3" not in name:
        logger.info("%s: could not tell ChatGLM2 from ChatGLM3; assuming ChatGLM3", src_dir)
    return "chatglm3"


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


def resolve_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    """``torch.dtype`` from a dtype or its name (``"bf16"``, ``"float16"``...); None and "auto" stay None."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return None
    try:
        return _DTYPES[dtype.lower().removeprefix("torch.")]
    except KeyError as exc:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(_DTYPES)}") from exc


# --------------------------------------------------------------------------------------------------
# Conversion
# --------------------------------------------------------------------------------------------------


def convert_chatglm(
    src_dir: str | Path,
    dst_dir: str | Path,
    dtype: torch.dtype | str | None = None,
    progress: bool = True,
    variant: str | None = None,
) -> Path:
    """Convert a ChatGLM2/3 checkpoint directory into a standard GLM directory at ``dst_dir``.

    Writes safetensors shards (one per source shard, with an index when there are several),
    ``config.json`` (``GlmForCausalLM``), ``generation_config.json`` (stop at ``</s>``, and for
    ChatGLM3 ``<|user|>`` and ``<|observation|>``), the fast tokenizer with its chat template, and
    ``chatforge_conversion.json`` recording the source. ``dtype`` None keeps the stored dtype.
    ``variant`` ("chatglm2"/"chatglm3") overrides :func:`detect_chatglm_variant`.
    """
    src_dir, dst_dir = Path(src_dir).expanduser(), Path(dst_dir).expanduser()
    config, raw_config = read_chatglm_config(src_dir)
    variant = variant or detect_chatglm_variant(src_dir, raw_config)
    target_dtype = resolve_dtype(dtype)
    shards = checkpoint_shards(src_dir)
    expected = expected_glm_shapes(config)

    # Tokenizer first: it is quick and catches a wrong tokenizer before minutes of weight conversion.
    try:
        tokenizer = build_chatglm_tokenizer(src_dir / "tokenizer.model", variant, config.seq_length)
    except ChatGLMTokenizerError as exc:
        raise ChatGLMConversionError(str(exc)) from exc
    n_pieces = len(tokenizer) - len(special_tokens_for(variant))
    if len(tokenizer) > config.padded_vocab_size:
        raise ChatGLMConversionError(
            f"{src_dir / 'tokenizer.model'}: {len(tokenizer)} tokens with the special tokens exceed "
            f"padded_vocab_size={config.padded_vocab_size} in config.json"
        )

    dst_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, str] = {}
    stored_dtype: torch.dtype | None = None
    bar = tqdm(total=len(expected), desc=f"Converting {src_dir.name}", unit="tensor", disable=not progress)
    try:
        for index, shard in enumerate(shards, start=1):
            mapped = map_chatglm_weights(_load_shard(shard), config, source=str(shard))
            out: dict[str, torch.Tensor] = {}
            for key, tensor in mapped.items():
                if key not in expected:  # e.g. a bias the config says does not exist
                    raise ChatGLMConversionError(f"{shard}: weight {key} is not expected by config.json")
                if tuple(tensor.shape) != expected[key]:
                    raise ChatGLMConversionError(
                        f"{shard}: {key} has shape {tuple(tensor.shape)}, config.json implies {expected[key]}"
                    )
                if key in written:
                    raise ChatGLMConversionError(f"{shard}: {key} also appears in {written[key]}")
                stored_dtype = stored_dtype or tensor.dtype
                out[key] = tensor.to(target_dtype).contiguous() if target_dtype else tensor.contiguous()
                bar.update(1)
            name = (
                "model.safetensors"
                if len(shards) == 1
                else f"model-{index:05d}-of-{len(shards):05d}.safetensors"
            )
            if out:  # a shard may hold only tensors the GLM model does not need
                save_file(out, str(dst_dir / name), metadata={"format": "pt"})
                written.update(dict.fromkeys(out, name))
            del mapped, out
    finally:
        bar.close()
    missing = sorted(set(expected) - set(written))
    if missing:
        raise ChatGLMConversionError(
            f"{src_dir}: weights missing for {len(missing)} tensors, e.g. {missing[:4]} "
            f"(original names: {_original_names(missing[:4])})"
        )
    if len(shards) > 1:
        total = sum((dst_dir / n).stat().st_size for n in set(written.values()))
        index_doc = {"metadata": {"total_size": total}, "weight_map": dict(sorted(written.items()))}
        (dst_dir / SAFE_WEIGHTS_INDEX).write_text(json.dumps(index_doc, indent=2), encoding="utf-8")

    final_dtype = target_dtype or stored_dtype
    _write_configs(dst_dir, config, variant, final_dtype, n_pieces)
    tokenizer.save_pretrained(dst_dir)
    _make_tokenizer_config_portable(dst_dir)
    info = {
        "converter": "chatforge.models.chatglm",
        "converter_version": CONVERTER_VERSION,
        "source": str(src_dir.resolve()),
        "variant": variant,
        "sentencepiece_pieces": n_pieces,
        "chatglm_config": asdict(config),
    }
    (dst_dir / CONVERSION_INFO_FILE).write_text(
        json.dumps(info, indent=2, ensure_ascii=False), encoding="utf-8"
    )
    logger.info("converted %s (%s, %d layers) to %s", src_dir, variant, config.num_layers, dst_dir)
    return dst_dir


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


def _write_configs(
    dst_dir: Path, config: ChatGLMConfig, variant: str, dtype: torch.dtype | None, n_pieces: int
) -> None:
    from transformers import GenerationConfig

    eos = eos_token_ids(variant, n_pieces)
    config.to_glm_config(eos, dtype).save_pretrained(dst_dir)
    # Readers of the older flat layout (transformers 4.x, some serving engines) look for these keys.
    config_path = dst_dir / "config.json"
    doc = json.loads(config_path.read_text(encoding="utf-8"))
    doc |= {"rope_theta": config.rope_theta, "partial_rotary_factor": 0.5}
    config_path.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    # ChatGLM's published chat defaults (chat()/stream_chat(): sampling with top_p 0.8, temperature 0.8).
    GenerationConfig(
        eos_token_id=eos,
        pad_token_id=0,
        do_sample=True,
        top_p=0.8,
        temperature=0.8,
        max_length=config.seq_length,
    ).save_pretrained(dst_dir)


def _make_tokenizer_config_portable(dst_dir: Path) -> None:
    """Name the tokenizer class and its extra special tokens the way transformers 4.x and 5.x both read."""
    path = dst_dir / "tokenizer_config.json"
    doc = json.loads(path.read_text(encoding="utf-8"))
    doc["tokenizer_class"] = "PreTrainedTokenizerFast"
    extra = doc.pop("extra_special_tokens", None)
    if extra:
        doc["additional_special_tokens"] = extra
    path.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------------------------------
# Loading with a conversion cache
# --------------------------------------------------------------------------------------------------


def converted_cache_root() -> Path:
    """``$CHATFORGE_HOME/converted`` if set, else ``~/.cache/chatforge/converted``."""
    home = os.environ.get("CHATFORGE_HOME")
    base = Path(home).expanduser() if home else Path.home() / ".cache" / "chatforge"
    return base / "converted"


def _source_fingerprint(src_dir: Path) -> str:
    """A key that changes when the source's config, weights or tokenizer change (path, size, mtime)."""
    files = [src_dir / "config.json", src_dir / "tokenizer.model", *checkpoint_shards(src_dir)]
    files += sorted(src_dir.glob("*.index.json")) + sorted(src_dir.glob("tokenization_chatglm.py"))
    digest = hashlib.sha256(f"{src_dir.resolve()}|v{CONVERTER_VERSION}".encode())
    for path in sorted(set(files)):
        if path.is_file():
            stat = path.stat()
            digest.update(f"|{path.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def converted_path_for(src_dir: str | Path, cache_dir: str | Path | None = None) -> Path:
    """Where :func:`load_chatglm` keeps the conversion of ``src_dir``."""
    src_dir = Path(src_dir).expanduser().resolve()
    root = Path(cache_dir).expanduser() if cache_dir else converted_cache_root()
    safe_name = re.sub(r"[^A-Za-z0-9._-]+", "_", src_dir.name) or "chatglm"
    return root / f"{safe_name}-{_source_fingerprint(src_dir)}"


def ensure_converted(src_dir: str | Path, cache_dir: str | Path | None = None, progress: bool = True) -> Path:
    """Convert ``src_dir`` into the cache unless an up-to-date conversion is there; return its path.

    The conversion is written to a temporary directory and renamed into place, so a crash or a
    concurrent conversion never leaves a half-written cache entry. Older conversions of the same
    source are removed.
    """
    src_dir = Path(src_dir).expanduser().resolve()
    target = converted_path_for(src_dir, cache_dir)
    if (target / CONVERSION_INFO_FILE).is_file():
        logger.debug("reusing converted %s", target)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    logger.info("converting ChatGLM checkpoint %s (first use; cached at %s)", src_dir, target)
    try:
        convert_chatglm(src_dir, staging, progress=progress)
        try:
            staging.rename(target)
        except OSError:
            if not (target / CONVERSION_INFO_FILE).is_file():
                raise
            logger.debug("another process converted %s first", src_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _remove_stale_conversions(src_dir, target)
    return target


def _remove_stale_conversions(src_dir: Path, current: Path) -> None:
    for info_path in current.parent.glob(f"*/{CONVERSION_INFO_FILE}"):
        entry = info_path.parent
        if entry == current:
            continue
        try:
            source = json.loads(info_path.read_text(encoding="utf-8")).get("source")
        except (OSError, json.JSONDecodeError):
            continue
        if source == str(src_dir):
            logger.info("removing outdated conversion %s", entry)
            shutil.rmtree(entry, ignore_errors=True)


def load_chatglm(
    path: str | Path,
    dtype: torch.dtype | str | None = None,
    device: str | torch.device | None = "cpu",
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> tuple[Any, Any]:
    """Load a ChatGLM2/3 checkpoint as ``(GlmForCausalLM, PreTrainedTokenizerFast)``, no remote code.

    The first call converts the checkpoint into the cache (see :func:`ensure_converted`); later calls
    reuse it. ``dtype`` None loads the stored dtype; ``device`` may be ``"cpu"``, ``"cuda:0"``, a
    ``torch.device`` or ``"auto"`` (accelerate's placement).
    """
    from transformers import GlmForCausalLM, PreTrainedTokenizerFast

    path = Path(path).expanduser()
    if not is_chatglm_checkpoint(path):
        raise ChatGLMConversionError(
            f"{path}: not a ChatGLM checkpoint (config.json must say model_type 'chatglm')"
        )
    converted = ensure_converted(path, cache_dir=cache_dir, progress=progress)
    kwargs: dict[str, Any] = {"dtype": resolve_dtype(dtype) or "auto", "local_files_only": True}
    if device is not None and str(device) != "cpu":
        kwargs["device_map"] = str(device)
    model = GlmForCausalLM.from_pretrained(converted, **kwargs)
    model.eval()
    tokenizer = PreTrainedTokenizerFast.from_pretrained(converted, local_files_only=True)
    return model, tokenizer


def chatglm_variant_of(converted_dir: str | Path) -> str | None:
    """The variant recorded in a converted directory ("chatglm2"/"chatglm3"), or None if not one."""
    info = Path(converted_dir) / CONVERSION_INFO_FILE
    if not info.is_file():
        return None
    return json.loads(info.read_text(encoding="utf-8")).get("variant")


__all__ = [
    "CHATGLM3_ROLE_TOKENS",
    "ChatGLMConfig",
    "ChatGLMConversionError",
    "chatglm_variant_of",
    "convert_chatglm",
    "converted_cache_root",
    "converted_path_for",
    "detect_chatglm_variant",
    "ensure_converted",
    "is_chatglm_checkpoint",
    "load_chatglm",
    "map_chatglm_weights",
]
