"""AdaLoRA's linear layers with the scaling applied where it is cheap.

peft's ``SVDLinear`` adds ``(x @ (A·E)ᵀ @ Bᵀ) · scaling / ranknum`` to the base output:
the scaling and the division run over the full output (batch × tokens × out features),
and dividing by ``ranknum``, a float32 tensor, turns a bf16 output into float32, so that
under autocast every adapted layer copies its output twice more and adds in float32. An
input in bf16 is also copied to float32 first (the adapter's own dtype) only for the matrix
product to cast it back. In ``chatforge learn``'s steps (the MLP linears of a 0.5B model)
those element-wise passes took a third of the time.

:func:`lean_adalora` gives each such layer, for a while, a forward pass that computes the
same sum with the scale applied to the rank-sized intermediate (``x @ (A·E)ᵀ``, a few
columns wide) and the input left in its dtype under autocast. Outside autocast it casts
the input as peft does; disabled or merged adapters take peft's own path.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch


def _lean_forward(layer: Any, peft_forward: Any) -> Any:
    def forward(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if layer.disable_adapters or layer.merged:
            return peft_forward(x, *args, **kwargs)
        result = layer.base_layer(x, *args, **kwargs)
        autocast = torch.is_autocast_enabled(x.device.type)
        for name in layer.active_adapters:
            if name not in layer.lora_A.keys():
                continue
            a, b, e = layer.lora_A[name], layer.lora_B[name], layer.lora_E[name]
            scale = layer.scaling[name] / (layer.ranknum[name] + 1e-5)
            inp = x if autocast else layer._cast_input_dtype(x, a.dtype)
            small = layer.lora_dropout[name](inp) @ (a * e).T  # (..., r)
            result = result + ((small * scale) @ b.T).to(result.dtype)
        return result

    return forward


@contextmanager
def lean_adalora(model: Any) -> Iterator[int]:
    """Inside, every AdaLoRA ``SVDLinear`` of ``model`` uses the leaner forward pass; yields
    how many layers do. Outside, peft's own."""
    from peft.tuners.adalora.layer import SVDLinear

    layers = [m for m in model.modules() if isinstance(m, SVDLinear)]
    try:
        for m in layers:
            m.forward = _lean_forward(m, m.forward)
        yield len(layers)
    finally:
        for m in layers:
            m.__dict__.pop("forward", None)


def orthogonality_penalty(model: Any) -> torch.Tensor | None:
    """AdaLoRA's orthogonality regulariser for ``model`` (a PEFT model), weighted: the mean
    over the trained adapter's A and B matrices of ‖AAᵀ − I‖ and ‖BᵀB − I‖ (Frobenius),
    times ``orth_reg_weight``. peft adds it only to a loss the model computes itself (with
    ``labels``); a trainer that computes the loss must add it. None for other adapters."""
    from peft.tuners.adalora import AdaLoraModel

    tuner = getattr(model, "base_model", None)
    if not isinstance(tuner, AdaLoraModel):
        return None
    name = tuner.trainable_adapter_name
    terms = []
    for key, p in tuner.model.named_parameters():
        if name not in key or ("lora_A" not in key and "lora_B" not in key) or p.numel() == 0:
            continue
        cov = p @ p.T if "lora_A" in key else p.T @ p
        eye = torch.eye(cov.shape[0], dtype=cov.dtype, device=cov.device)
        terms.append(torch.linalg.matrix_norm(cov - eye))
    if not terms:
        return None
    return tuner.peft_config[name].orth_reg_weight * torch.stack(terms).mean()
