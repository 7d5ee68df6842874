"""Float32 linear layers through oneDNN on a CPU, for inference.

PyTorch computes a float32 ``nn.Linear`` on a CPU with MKL's ``sgemm``. For the few rows of
a decoding step that is far from the memory bound: measured on a 2-vCPU AMD EPYC, a
4864×896 layer took 3.8 ms for 11 rows (1.4 ms for one), where oneDNN's matrix product
on a weight packed once in its own layout took 1.0 ms; for 1000 rows, 66 ms against
48 ms. ``chatforge learn`` checks its models in float32 (greedy answers that batching does
not change), so its retention check spends most of its time there.

Inside :func:`onednn_linears`, a model's float32 ``nn.Linear`` layers are computed with a
copy of their weight packed once (at first use), while no gradient is recorded. Both
libraries compute the same float32 products and sums, in another order: results differ
in the last bits (1e-4 on logits of about 10), as they do between two batch sizes. A
layer whose weight was replaced, changed or cast after entry (an adapter merged, the model
cast to bfloat16) is computed as before, and on leaving every layer is what it was. Where oneDNN
is not there (another device, a build without it), or where the packed copies (as large as
the float32 weights) would leave less than 1 GiB of memory free, the context does nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)

_MIN_WEIGHT = 1024  # weights of fewer elements keep the usual path
_SPARE = 1 << 30  # bytes left free after the packed copies, or nothing is packed


def _available_bytes() -> int | None:
    """The memory the system can still give (Linux's MemAvailable); None where unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def available() -> bool:
    return bool(torch.backends.mkldnn.is_available()) and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def _packable(layer: nn.Module) -> bool:
    weight = getattr(layer, "weight", None)
    return (
        isinstance(layer, nn.Linear)
        and weight is not None
        and weight.device.type == "cpu"
        and weight.dtype == torch.float32
        and weight.numel() >= _MIN_WEIGHT
        and (layer.bias is None or layer.bias.dtype == torch.float32)
    )


def _packed_forward(layer: nn.Linear, original: Any) -> Any:
    """``layer``'s forward through a copy of its weight packed on first use (the usual
    forward where oneDNN refuses to pack it)."""
    weight = layer.weight
    source = (weight.data_ptr(), weight.dtype, weight._version)
    packed: list[torch.Tensor | None] = []

    def forward(x: torch.Tensor) -> torch.Tensor:
        w = layer.weight
        if (
            torch.is_grad_enabled()
            or (w.data_ptr(), w.dtype, w._version) != source
            or x.dtype != torch.float32
        ):
            return original(x)
        if not packed:
            try:
                packed.append(torch.ops.mkldnn._reorder_linear_weight(w.detach()))
            except RuntimeError:
                packed.append(None)
        if packed[0] is None:
            return original(x)
        bias = None if layer.bias is None else layer.bias.detach()
        return torch.ops.mkldnn._linear_pointwise(x.contiguous(), packed[0], bias, "none", [], "")

    return forward


@contextmanager
def onednn_linears(model: nn.Module) -> Iterator[int]:
    """Inside, ``model``'s float32 CPU linears run through oneDNN when no gradient is
    recorded (see the module docstring); yields how many layers may. Each weight is packed
    at its layer's first use inside: a context in which nothing runs costs nothing."""
    layers = [m for m in model.modules() if _packable(m)] if available() else []
    need = sum(m.weight.numel() * m.weight.element_size() for m in layers)
    free = _available_bytes()
    if layers and free is not None and free < need + _SPARE:
        log.info(
            "float32 linears not packed for oneDNN: %.1f GiB needed, %.1f GiB free",
            need / 2**30,
            free / 2**30,
        )
        layers = []
    patched: list[tuple[nn.Module, Any]] = []  # (layer, its own forward attribute, if it had one)
    try:
        for layer in layers:
            patched.append((layer, layer.__dict__.get("forward")))
            layer.forward = _packed_forward(layer, layer.forward)  # type: ignore[method-assign]
        yield len(patched)
    finally:
        for layer, own in reversed(patched):
            if own is None:
                del layer.forward  # the class's forward again
            else:
                layer.forward = own  # type: ignore[method-assign]
