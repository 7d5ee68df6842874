"""A GGUF's Q5_0 matrices rewritten as Q8_0 with the same values, for llama.cpp's AMX path.

llama.cpp has AMX kernels for Q8_0 but none for Q5_0, the type of most of the default
model's matrices (:mod:`chatforge.engines.amx`). The rewrite loses nothing: a Q5_0 block holds
a float16 scale ``d`` and 32 five-bit values ``q``, each weight being ``d * (q - 16)``; the
Q8_0 block with the same ``d`` and the eight-bit values ``q - 16`` holds the same weights,
bit for bit. Every other tensor and all metadata are copied as they are; the file grows by
about a fifth (491 → 586 MB for the default model). Written once into the cache directory,
keyed by the source file's path, size and modification time.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from chatforge.models.embedded import cache_dir, file_key
from chatforge.models.gguf.export import copy_metadata
from chatforge.models.gguf.scan import tensors

log = logging.getLogger(__name__)

Q5_0_BLOCK = 22  # bytes: float16 scale, 32 high bits, 16 bytes of low nibbles
Q8_0_BLOCK = 34  # bytes: float16 scale, 32 signed bytes
# Tensors read by row lookup, not multiplied: no AMX kernel would run on them.
_LOOKUP_ONLY = ("token_embd.weight",)


def q5_0_as_q8_0(raw: np.ndarray) -> np.ndarray:
    """Q5_0 blocks (``(..., 22·k)`` bytes) as Q8_0 blocks with the same values (``(..., 34·k)``)."""
    shape = raw.shape
    blocks = np.ascontiguousarray(raw, dtype=np.uint8).reshape(-1, Q5_0_BLOCK)
    scale = blocks[:, :2]
    high = blocks[:, 2:6].copy().view("<u4")[:, 0]
    packed = blocks[:, 6:]
    low = np.concatenate([packed & 0x0F, packed >> 4], axis=1)  # values 0-15, then 16-31
    bits = ((high[:, None] >> np.arange(32, dtype=np.uint32)) & 1).astype(np.uint8)
    values = (low | (bits << 4)).astype(np.int16) - 16
    out = np.concatenate([scale, values.astype(np.int8).view(np.uint8)], axis=1)
    return out.reshape(*shape[:-1], shape[-1] // Q5_0_BLOCK * Q8_0_BLOCK)


def _widenable(name: str, kind: int, shape: Any) -> bool:
    import gguf

    return kind == gguf.GGMLQuantizationType.Q5_0 and len(shape) >= 2 and name not in _LOOKUP_ONLY


def needs_widening(path: Path) -> bool:
    """Whether ``path`` holds matrices :func:`widened` would rewrite (checked on every load
    of the model: the tensor list alone, :mod:`chatforge.models.gguf.scan`)."""
    return any(_widenable(t.name, t.type, t.shape) for t in tensors(path))


def widened(path: Path, progress: bool = True) -> Path:
    """``path`` with its Q5_0 matrices as Q8_0 (the same weights), written once to the cache."""
    import gguf

    path = Path(path)
    output = cache_dir() / "gguf" / f"{path.stem}-q5_0-as-q8_0-{file_key(path)}.gguf"
    if output.exists():
        return output
    output.parent.mkdir(parents=True, exist_ok=True)
    log.info("writing %s with its Q5_0 matrices as Q8_0, for llama.cpp's AMX kernels (once)", path.name)
    reader = gguf.GGUFReader(str(path))
    partial = output.with_name(f".{output.name}.{os.getpid()}.partial")
    writer = gguf.GGUFWriter(str(partial), str(reader.fields["general.architecture"].contents()))
    copy_metadata(reader, writer)
    widened_any = False
    for tensor in reader.tensors:
        data = np.asarray(tensor.data)  # quantized types: bytes, shaped (rows, bytes per row)
        kind = tensor.tensor_type
        if _widenable(tensor.name, tensor.tensor_type, tensor.shape):
            data, kind, widened_any = q5_0_as_q8_0(data), gguf.GGMLQuantizationType.Q8_0, True
        writer.add_tensor(tensor.name, data, raw_shape=data.shape, raw_dtype=kind)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0 if widened_any else _file_type(reader))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file(progress=progress)
        writer.close()
        os.replace(partial, output)
    finally:
        partial.unlink(missing_ok=True)
    return output


def _file_type(reader: Any) -> int:
    field = reader.fields.get("general.file_type")
    return int(field.contents()) if field is not None else 0
