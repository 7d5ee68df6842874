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

Public API: :func:`is_chatglm_checkpoint`, :func:`convert_chatglm`, :func:`load_chatglm`. The
checkpoint's config: :mod:`chatforge.models.chatglm.config`; weight names and shards:
:mod:`chatforge.models.chatglm.weights`. Adapters trained on the original layout:
:mod:`chatforge.models.chatglm.adapters`; the command line: :mod:`chatforge.cli.convert`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from tqdm.auto import tqdm

from chatforge import env
from chatforge.models.chatglm.config import (
    ChatGLMConfig,
    ChatGLMConversionError,
    detect_chatglm_variant,
    eos_token_ids,
    is_chatglm_checkpoint,
    read_chatglm_config,
)
from chatforge.models.chatglm.tokenizer import (
    CHATGLM3_ROLE_TOKENS,
    ChatGLMTokenizerError,
    build_chatglm_tokenizer,
    special_tokens_for,
)
from chatforge.models.chatglm.weights import (
    _load_shard,
    _original_names,
    checkpoint_shards,
    expected_glm_shapes,
    map_chatglm_weights,
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
        "converter": "chatforge.models.chatglm.convert",
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
    return env.home() / "converted"


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
