"""The architecture of a ChatGLM2/3 checkpoint: its validated ``config.json`` and its variant.

`ChatGLMConfig` holds the fields the conversion needs (refusing variants the GLM architecture
cannot express, naming the field), splits fused ``query_key_value`` tensors and builds the
equivalent ``transformers.GlmConfig``. The functions here recognise a ChatGLM checkpoint
directory, read its config and tell ChatGLM2 from ChatGLM3. Used by :mod:`chatforge.models.chatglm.convert`
and :mod:`chatforge.models.chatglm.adapters`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from chatforge.models.chatglm.tokenizer import special_tokens_for

# One logger for the ChatGLM conversion, as before it was split into modules.
logger = logging.getLogger("chatforge.models.chatglm.convert")


class ChatGLMConversionError(ValueError):
    """A ChatGLM checkpoint that cannot be converted; the message names the file and field or weight."""


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
