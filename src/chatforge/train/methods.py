"""Which parameters train: LoRA, AdaLoRA, P-Tuning v2 (prefix tuning), full fine-tuning, QLoRA.

Adapters come from peft, so an adapter saved here loads with
``chatforge.load_model(..., adapter=dir)`` and with plain ``PeftModel.from_pretrained``.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F

from chatforge.train.config import LoraConfig, PTuningConfig

log = logging.getLogger(__name__)

# Default LoRA targets per architecture (config.model_type): every linear layer of
# attention and MLP, as the usual recipes for these families do.
DEFAULT_TARGETS: dict[str, list[str]] = {
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "mistral": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "gemma3_text": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    # ChatGLM checkpoints are converted to transformers' Glm (fused gate_up_proj).
    "glm": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_up_proj", "down_proj"],
}


class MethodError(ValueError):
    """A method cannot be used with this model or machine; the text says what to do."""


def target_modules(model: Any, configured: list[str]) -> list[str]:
    if configured:
        return list(configured)
    model_type = getattr(model.config, "model_type", "")
    if model_type in DEFAULT_TARGETS:
        return DEFAULT_TARGETS[model_type]
    names = sorted(
        {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
        - {"lm_head", "output", "embed_out"}
    )
    raise MethodError(
        f"no default LoRA targets for model_type {model_type!r}; set lora.target_modules "
        f"(linear layers in this model: {', '.join(names)})"
    )


def _layers(model: Any, layers: list[int]) -> list[int] | None:
    """``lora.layers`` for peft (None: every layer), checked against the model's depth."""
    if not layers:
        return None
    depth = getattr(model.config, "num_hidden_layers", None)
    if depth is not None and max(layers) >= depth:
        raise MethodError(f"lora.layers {layers}: this model has layers 0-{depth - 1}")
    return sorted(set(layers))


def trainable_token_indices(model: Any, tokenizer: Any, tokens: list[str]) -> dict[str, list[int]] | None:
    """peft's ``trainable_token_indices`` for ``tokens``: their rows of the input embedding and,
    when it is a separate matrix, of the output layer."""
    if not tokens:
        return None
    if tokenizer is None:
        raise MethodError("lora.trainable_tokens needs the tokenizer to find the tokens' ids")
    ids = []
    unk = getattr(tokenizer, "unk_token_id", None)
    for token in tokens:
        tid = tokenizer.convert_tokens_to_ids(token)
        if not isinstance(tid, int) or tid == unk:
            raise MethodError(f"lora.trainable_tokens: {token!r} is not a single token of this tokenizer")
        ids.append(tid)
    names = {id(m): n for n, m in model.named_modules()}
    embed, output = model.get_input_embeddings(), model.get_output_embeddings()
    layers = {names[id(embed)]: ids}
    tied = output is None or output.weight is embed.weight
    if not tied:
        layers[names[id(output)]] = ids  # peft trains tied output rows through the embedding
    return layers


def indistinct_output_rows(model: Any, token_ids: set[int], min_cosine: float = 0.999) -> dict[int, int]:
    """Tokens among ``token_ids`` whose output-layer row points the same way (cosine
    ≥ ``min_cosine``) as other tokens' rows, with how many: rows a checkpoint never
    trained, often special tokens such as ``<tool_call>``. LoRA cannot make the model
    prefer such a token over its look-alikes; ``lora.trainable_tokens`` can."""
    output = model.get_output_embeddings()
    wanted = sorted(i for i in token_ids if output is not None and 0 <= i < output.weight.shape[0])
    if not wanted:
        return {}
    with torch.no_grad():
        weight = output.weight
        targets = F.normalize(weight[wanted].float(), dim=-1)
        counts = sum(
            ((F.normalize(chunk.float(), dim=-1) @ targets.T) >= min_cosine).sum(dim=0)
            for chunk in weight.split(16384)
        )
    return {tid: int(n) - 1 for tid, n in zip(wanted, counts, strict=True) if n > 1}


def check_qlora() -> None:
    if not torch.cuda.is_available():
        raise MethodError("QLoRA needs a CUDA GPU (4-bit bitsandbytes kernels); use method lora on CPU")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise MethodError("QLoRA needs bitsandbytes: pip install bitsandbytes") from None


def apply_method(
    model: Any,
    method: str,
    lora: LoraConfig,
    ptuning: PTuningConfig,
    total_steps: int | None = None,
    tokenizer: Any = None,
) -> Any:
    """The model ready to train with ``method``; prints how many parameters train.

    ``tokenizer`` resolves ``lora.trainable_tokens`` (needed only when that is set).
    """
    if method == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        _log_trainable(model)
        return model
    from peft import AdaLoraConfig, PrefixTuningConfig, TaskType, get_peft_model
    from peft import LoraConfig as PeftLoraConfig

    if method in ("lora", "qlora"):
        if method == "qlora":
            check_qlora()
            from peft import prepare_model_for_kbit_training

            model = prepare_model_for_kbit_training(model)
        cfg: Any = PeftLoraConfig(
            task_type=TaskType.CAUSAL_LM,
            r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=target_modules(model, lora.target_modules),
            layers_to_transform=_layers(model, lora.layers),
            trainable_token_indices=trainable_token_indices(model, tokenizer, lora.trainable_tokens),
        )
    elif method == "adalora":
        if not total_steps:
            raise MethodError("AdaLoRA needs the total number of training steps (training.max_steps or data)")
        tfinal = lora.tfinal
        if lora.tinit + tfinal >= total_steps:
            # peft requires a pruning phase; keep one step of it rather than fail.
            tfinal = max(0, total_steps - lora.tinit - 1)
            log.warning("AdaLoRA: lora.tinit + lora.tfinal >= total steps; tfinal set to %d", tfinal)
        cfg = AdaLoraConfig(
            task_type=TaskType.CAUSAL_LM,
            init_r=lora.init_r,
            target_r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            tinit=lora.tinit,
            tfinal=tfinal,
            deltaT=lora.delta_t,
            total_step=total_steps,
            target_modules=target_modules(model, lora.target_modules),
            layers_to_transform=_layers(model, lora.layers),
            trainable_token_indices=trainable_token_indices(model, tokenizer, lora.trainable_tokens),
        )
    elif method == "ptuning_v2":
        if lora.trainable_tokens:
            raise MethodError("lora.trainable_tokens needs method lora or adalora")
        cfg = PrefixTuningConfig(
            task_type=TaskType.CAUSAL_LM,
            num_virtual_tokens=ptuning.num_virtual_tokens,
            prefix_projection=ptuning.projection,
        )
    else:
        raise MethodError(f"unknown method {method!r}; use lora, adalora, ptuning_v2, full or qlora")
    model = get_peft_model(model, cfg)
    _log_trainable(model)
    return model


def _log_trainable(model: Any) -> None:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    log.info(
        "trainable parameters: %s of %s (%.3f%%)", f"{trainable:,}", f"{total:,}", 100 * trainable / total
    )


def is_peft(model: Any) -> bool:
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover - peft is a dependency
        return False
    return isinstance(model, PeftModel)
