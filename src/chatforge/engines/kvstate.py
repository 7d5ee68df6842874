"""Reading and writing one llama.cpp sequence's KV cache as the bytes of its state API.

``llama_state_seq_get_data`` / ``llama_state_seq_set_data`` move a sequence's cache in
and out of a llama.cpp context. The layout (llama.cpp's ``llama_kv_cache::state_write``):

* ``u32`` magic, ``i32`` sequence id;
* ``u32`` number of streams, then for each stream ``u32`` cell count, and for a stream
  with cells:

  * per cell: ``i32`` position, ``u32`` number of sequence ids (1), ``i32`` sequence id;
  * ``u32`` V-transposed flag, ``u32`` number of layers;
  * per layer: ``i32`` K type, ``u64`` K row size, then one K row per cell;
  * per layer, V untransposed: the same as K; transposed: ``i32`` type, ``u32`` element
    size, ``u32`` row width, then for each of the row's elements its value in every cell.

A K row holds every KV head's post-RoPE key one after another (head-major), as the
transformers cache does once its ``(heads, tokens, dim)`` is turned into ``(tokens,
heads * dim)``. :func:`read_state` checks every byte is accounted for, so a llama.cpp whose
layout differs is detected (see ``LayoutProbe`` in :mod:`chatforge.engines.hybrid`)
instead of being written garbage.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

MAGIC = 0xAF143CD8
GGML_F32 = 0
GGML_F16 = 1
_DTYPES = {GGML_F32: np.float32, GGML_F16: np.float16}


class StateFormatError(ValueError):
    """The bytes are not a sequence state this module understands."""


@dataclass
class SeqState:
    """One sequence's cache: positions and, per layer, K and V as ``(cells, width)`` arrays."""

    seq_id: int
    n_stream: int
    stream: int  # which stream holds the cells (the sequence's own when streams are per sequence)
    positions: np.ndarray  # int32, (cells,)
    keys: list[np.ndarray]
    values: list[np.ndarray]
    v_trans: bool
    k_type: int = GGML_F16
    v_type: int = GGML_F16

    @property
    def n_cells(self) -> int:
        return len(self.positions)


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = memoryview(data)
        self.at = 0

    def take(self, fmt: str) -> tuple:
        size = struct.calcsize(fmt)
        if self.at + size > len(self.data):
            raise StateFormatError(f"state ends early at byte {self.at} (wanted {size} more)")
        out = struct.unpack_from(fmt, self.data, self.at)
        self.at += size
        return out

    def array(self, dtype: type, count: int) -> np.ndarray:
        size = np.dtype(dtype).itemsize * count
        if self.at + size > len(self.data):
            raise StateFormatError(f"state ends early at byte {self.at} (wanted {size} more)")
        out = np.frombuffer(self.data[self.at : self.at + size], dtype=dtype).copy()
        self.at += size
        return out


def _dtype(ggml_type: int) -> type:
    if ggml_type not in _DTYPES:
        raise StateFormatError(f"KV cache type {ggml_type} is not F16 or F32")
    return _DTYPES[ggml_type]


def read_state(data: bytes) -> SeqState:
    """Parse ``llama_state_seq_get_data``'s bytes for one sequence with its cells in one stream."""
    r = _Reader(data)
    magic, seq_id = r.take("<Ii")
    if magic != MAGIC:
        raise StateFormatError(f"wrong magic {magic:#x}")
    (n_stream,) = r.take("<I")
    found: SeqState | None = None
    for stream in range(n_stream):
        (cells,) = r.take("<I")
        if cells == 0:
            continue
        if found is not None:
            raise StateFormatError("cells in more than one stream")
        positions = np.empty(cells, dtype=np.int32)
        for i in range(cells):
            pos, n_seq = r.take("<iI")
            if n_seq != 1:
                raise StateFormatError(f"cell {i} belongs to {n_seq} sequences")
            r.take("<i")
            positions[i] = pos
        v_trans, n_layer = r.take("<II")
        keys, k_type = [], GGML_F16
        for _ in range(n_layer):
            k_type, row = r.take("<iQ")
            dtype = _dtype(k_type)
            width = row // np.dtype(dtype).itemsize
            keys.append(r.array(dtype, cells * width).reshape(cells, width))
        values, v_type = [], GGML_F16
        for _ in range(n_layer):
            if v_trans:
                v_type, elem, width = r.take("<iII")
                dtype = _dtype(v_type)
                if elem != np.dtype(dtype).itemsize:
                    raise StateFormatError(f"V element size {elem} for type {v_type}")
                values.append(r.array(dtype, cells * width).reshape(width, cells).T.copy())
            else:
                v_type, row = r.take("<iQ")
                dtype = _dtype(v_type)
                width = row // np.dtype(dtype).itemsize
                values.append(r.array(dtype, cells * width).reshape(cells, width))
        found = SeqState(seq_id, n_stream, stream, positions, keys, values, bool(v_trans), k_type, v_type)
    if r.at != len(r.data):
        raise StateFormatError(f"{len(r.data) - r.at} bytes left over: the layout is not the expected one")
    if found is None:
        raise StateFormatError("the sequence holds no cells")
    return found


def write_state(state: SeqState) -> bytes:
    """The bytes ``llama_state_seq_set_data`` takes to load ``state`` into a sequence."""
    cells = state.n_cells
    parts = [struct.pack("<IiI", MAGIC, state.seq_id, state.n_stream)]
    for stream in range(state.n_stream):
        parts.append(struct.pack("<I", cells if stream == state.stream else 0))
        if stream != state.stream:
            continue
        meta = np.empty((cells, 3), dtype=np.int32)
        meta[:, 0] = state.positions
        meta[:, 1] = 1
        meta[:, 2] = state.seq_id
        parts.append(meta.tobytes())
        parts.append(struct.pack("<II", int(state.v_trans), len(state.keys)))
        k_dtype, v_dtype = _dtype(state.k_type), _dtype(state.v_type)
        for k in state.keys:
            k = np.ascontiguousarray(k, dtype=k_dtype)
            parts.append(struct.pack("<iQ", state.k_type, k.shape[1] * k.itemsize))
            parts.append(k.tobytes())
        for v in state.values:
            v = np.asarray(v, dtype=v_dtype)
            if state.v_trans:
                parts.append(struct.pack("<iII", state.v_type, v.itemsize, v.shape[1]))
                parts.append(np.ascontiguousarray(v.T).tobytes())
            else:
                parts.append(struct.pack("<iQ", state.v_type, v.shape[1] * v.itemsize))
                parts.append(np.ascontiguousarray(v).tobytes())
    return b"".join(parts)
