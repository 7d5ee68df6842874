"""Writing a (merged, fine-tuned) Hugging Face model back to a GGUF file for llama.cpp.

The base model's own GGUF is the template: its metadata (architecture hyperparameters,
tokenizer vocabulary and merges, chat template, special tokens) is copied as it is, so
llama.cpp tokenizes and formats exactly as it did for the base. The weights come from the
Hugging Face model, renamed to GGUF's tensor names (``gguf.TensorNameMap``), matrices as
F16 and vectors as F32; llama.cpp's own quantizer (``llama_model_quantize``) then turns
that into Q8_0, Q4_K_M, Q4_0 or IQ4_NL when asked.

:func:`requantized` runs the same quantizer on an existing GGUF (``--quantize iq4_nl``):
4-bit types whose weights llama.cpp repacks for the CPU's vector units decode several
sequences together faster than the Q5_0 most of the default model's matrices hold, at a
measured cost in perplexity (docs/benchmarks.md).

Conversions to GGUF permute the rows of the query and key projections for models whose
llama.cpp graph applies rotary embeddings to interleaved pairs (the llama family);
transformers undoes this when it loads such a GGUF. Which layout the template uses is not
guessed from the architecture name: layer 0's query and key weights are written both ways
and compared with the template's own (dequantized) tensors, and the closer one is used.
A fine-tuned model differs from its base by a small update, so the right layout is far
closer; when neither is, the model is not a fine-tune of that base and the export stops.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from chatforge.llama_lib import import_llama_cpp
from chatforge.models.embedded import cache_dir, file_key
from chatforge.models.gguf.scan import tensors

log = logging.getLogger(__name__)

GGUF_TYPES = ("f16", "bf16", "q8_0", "q4_k_m", "q4_0", "iq4_nl")
REQUANTIZE_TYPES = ("q4_0", "iq4_nl", "q8_0")  # what ``--quantize`` turns an existing GGUF into
# Bits per weight of a matrix in each type (vectors stay F32): the expected size that the
# quantizer's progress bar fills.
_BITS = {"f16": 16.0, "bf16": 16.0, "q8_0": 8.5, "q4_k_m": 4.9, "q4_0": 4.5, "iq4_nl": 4.5}
# Types whose output layer is quantized like the rest. llama.cpp keeps it at 6-8 bits by
# default; for IQ4_NL that costs a third of the bytes each decode step reads (the default
# model's 151,936 x 896 output layer), and IQ4_NL there cost at most 1.7% perplexity in
# benchmarks/quality.py while four streams decoded ~25% faster.
_OUTPUT_LIKE_BODY = ("iq4_nl",)
# The relative difference to the base's layer-0 Q/K that still counts as "a fine-tune of it".
_MATCH_TOLERANCE = 0.5
# Fields the writer sets itself, or that describe the template's quantization.
_SKIP_FIELDS = ("GGUF.", "general.architecture", "general.file_type", "general.quantization_version")


class GGUFExportError(ValueError):
    """The model cannot be written as a GGUF file (with an explanation)."""


def _llama_interleave(weight: np.ndarray, heads: int) -> np.ndarray:
    """Rows of a Q or K projection reordered from rotate-half to interleaved pairs, per head."""
    rows = weight.shape[0]
    return (
        weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)
    )


def _dequantized(tensor: Any) -> np.ndarray:
    import gguf

    data = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
    return np.asarray(data, dtype=np.float32).reshape([int(x) for x in reversed(tensor.shape.tolist())])


def _relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).mean() / (np.abs(b).mean() or 1.0))


def write_gguf(
    model: Any,
    template: str | Path,
    output: str | Path,
    gguf_type: str = "q4_k_m",
    progress: bool = True,
) -> Path:
    """Write ``model`` (a transformers causal LM) as ``output`` with ``template``'s metadata."""
    import gguf
    import torch

    if gguf_type not in GGUF_TYPES:
        raise GGUFExportError(f"--gguf-type {gguf_type!r}: use one of {', '.join(GGUF_TYPES)}")
    template, output = Path(template), Path(output)
    reader = gguf.GGUFReader(str(template))
    arch = str(reader.fields["general.architecture"].contents())
    arch_ids = {name: key for key, name in gguf.MODEL_ARCH_NAMES.items()}
    if arch not in arch_ids:
        raise GGUFExportError(f"{template}: architecture {arch!r} is unknown to the gguf package")
    config = model.config
    blocks = int(config.num_hidden_layers)
    names = gguf.get_tensor_name_map(arch_ids[arch], blocks)
    base = {t.name: t for t in reader.tensors}
    heads = int(config.num_attention_heads)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)

    state = {k: v.detach().to(torch.float32).cpu().numpy() for k, v in model.state_dict().items()}
    renamed: dict[str, np.ndarray] = {}
    for key, value in state.items():
        name = names.get_name(key, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise GGUFExportError(f"no GGUF name for the weight {key!r} of a {arch} model")
        renamed[name] = value
    if "output.weight" in base and "output.weight" not in renamed:  # tied embeddings, written out
        renamed["output.weight"] = renamed["token_embd.weight"]
    if "output.weight" not in base:
        renamed.pop("output.weight", None)
    missing = sorted(set(base) - set(renamed))
    extra = sorted(set(renamed) - set(base))
    if extra:
        raise GGUFExportError(f"the model has weights the base GGUF does not: {', '.join(extra[:5])}")

    interleave = _choose_layout(renamed, base, heads, kv_heads)
    if interleave:
        for i in range(blocks):
            for part, n in (("attn_q", heads), ("attn_k", kv_heads)):
                for suffix in ("weight", "bias"):
                    name = f"blk.{i}.{part}.{suffix}"
                    if name in renamed:
                        renamed[name] = _llama_interleave(renamed[name], n)

    output.parent.mkdir(parents=True, exist_ok=True)
    f16_path = output if gguf_type == "f16" else output.with_name(f".{output.name}.f16-{os.getpid()}")
    partial = f16_path.with_name(f".{f16_path.name}.partial")
    writer = gguf.GGUFWriter(str(partial), arch)
    copy_metadata(reader, writer)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    for tensor in reader.tensors:  # the template's order; its extra tensors (e.g. rope factors) kept
        if tensor.name in renamed:
            data = renamed[tensor.name]
            data = data.astype(np.float16) if data.ndim >= 2 else data.astype(np.float32)
            writer.add_tensor(tensor.name, data)
        else:
            data = np.asarray(tensor.data)  # quantized types: bytes, shaped (rows, bytes per row)
            writer.add_tensor(tensor.name, data, raw_shape=data.shape, raw_dtype=tensor.tensor_type)
    if missing:
        log.info(
            "kept %d tensors of the base GGUF the model has no weights for: %s", len(missing), missing[:5]
        )
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file(progress=progress)
    writer.close()
    os.replace(partial, f16_path)
    if gguf_type != "f16":
        try:
            quantize(f16_path, output, gguf_type)
        finally:
            f16_path.unlink(missing_ok=True)
    log.info("wrote %s (%s, %.0f MB)", output, gguf_type, output.stat().st_size / 1e6)
    return output


def copy_metadata(reader: Any, writer: Any) -> None:
    """Every key/value of ``reader``'s GGUF into ``writer``, but those describing the file's
    own layout and quantization (the writer sets them)."""
    for key, field in reader.fields.items():
        if key.startswith(_SKIP_FIELDS):
            continue
        sub = field.types[1] if len(field.types) > 1 else None
        writer.add_key_value(key, field.contents(), field.types[0], sub)


def _choose_layout(renamed: dict[str, np.ndarray], base: dict[str, Any], heads: int, kv_heads: int) -> bool:
    """Whether the template stores Q/K rows interleaved (see the module docstring)."""
    errors = {}
    for interleave in (False, True):
        total = 0.0
        for part, n in (("attn_q", heads), ("attn_k", kv_heads)):
            name = f"blk.0.{part}.weight"
            if name not in base or name not in renamed:
                raise GGUFExportError(f"the base GGUF or the model has no {name}")
            mine = _llama_interleave(renamed[name], n) if interleave else renamed[name]
            total += _relative(mine, _dequantized(base[name]))
        errors[interleave] = total / 2
    best = min(errors, key=errors.get)
    if errors[best] > _MATCH_TOLERANCE:
        raise GGUFExportError(
            f"the model's attention weights differ from the base GGUF's by {errors[best]:.0%}: "
            "it is not a fine-tune of that base (pass the GGUF of the model it was trained from)"
        )
    log.info(
        "GGUF layout: %s Q/K rows (difference to the base %.1f%%)",
        "interleaved" if best else "rotate-half",
        100 * errors[best],
    )
    return best


def quantize(
    source: Path, output: Path, gguf_type: str, *, requantize: bool = False, progress: bool = False
) -> Path:
    """llama.cpp's quantizer: ``source`` (F16 GGUF, or any GGUF with ``requantize``) →
    ``output`` in ``gguf_type``."""
    lib = import_llama_cpp()  # llama.cpp's line per tensor is an info line: shown with -v only
    ftypes = {
        "bf16": lib.LLAMA_FTYPE_MOSTLY_BF16,
        "q8_0": lib.LLAMA_FTYPE_MOSTLY_Q8_0,
        "q4_k_m": lib.LLAMA_FTYPE_MOSTLY_Q4_K_M,
        "q4_0": lib.LLAMA_FTYPE_MOSTLY_Q4_0,
        "iq4_nl": lib.LLAMA_FTYPE_MOSTLY_IQ4_NL,
    }
    params = lib.llama_model_quantize_default_params()
    params.ftype = ftypes[gguf_type]
    params.nthread = 0
    params.allow_requantize = requantize
    if gguf_type in _OUTPUT_LIKE_BODY:
        params.output_tensor_type = getattr(lib, f"GGML_TYPE_{gguf_type.upper()}")
    partial = output.with_name(f".{output.name}.{os.getpid()}.partial")  # two processes may run at once
    expected = _expected_size(source, gguf_type)
    # llama.cpp warns once per tensor that falls back to another type: kept off the terminal.
    with _native_stderr_silenced() as stderr:
        with _size_progress(partial, expected, f"quantizing to {gguf_type}", stderr if progress else None):
            status = lib.llama_model_quantize(str(source).encode(), str(partial).encode(), params)
    if status != 0 or not partial.exists():
        partial.unlink(missing_ok=True)
        raise GGUFExportError(f"llama.cpp could not quantize {source.name} to {gguf_type} (status {status})")
    shutil.move(partial, output)
    return output


def requantized(gguf_path: Path, gguf_type: str, progress: bool = True) -> Path:
    """``gguf_path`` re-quantized to ``gguf_type`` by llama.cpp, once: the result is kept in
    the cache directory, keyed by the source's path, size and modification time."""
    if gguf_type not in REQUANTIZE_TYPES:
        raise GGUFExportError(
            f"--quantize {gguf_type!r}: a GGUF file can be re-quantized to {', '.join(REQUANTIZE_TYPES)}"
        )
    gguf_path = Path(gguf_path)
    output = cache_dir() / "gguf" / f"{gguf_path.stem}-{gguf_type}-{file_key(gguf_path)}.gguf"
    if output.exists():
        return output
    output.parent.mkdir(parents=True, exist_ok=True)
    log.info("re-quantizing %s to %s (once; kept as %s)", gguf_path.name, gguf_type, output)
    return quantize(gguf_path, output, gguf_type, requantize=True, progress=progress)


def _expected_size(source: Path, gguf_type: str) -> int:
    total = 0
    for tensor in tensors(source):
        n = int(tensor.n_elements)
        bits = _BITS[gguf_type]
        if tensor.name == "output.weight" and gguf_type not in _OUTPUT_LIKE_BODY:
            bits = max(bits, 8.5)  # llama.cpp keeps the output layer at 6 bits or more
        total += int(n * bits / 8) if len(tensor.shape) >= 2 else 4 * n
    return total


@contextlib.contextmanager
def _native_stderr_silenced() -> Iterator[TextIO]:
    """llama.cpp's messages kept out of the terminal while the body runs: file descriptor 2
    sent to /dev/null, and ``sys.stderr`` too (llama-cpp-python's log callback prints its
    warnings there). Yields a stream on the real stderr, for a progress bar."""
    sys.stderr.flush()
    real = sys.stderr
    saved = os.dup(2)
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    os.close(null)
    stream = open(saved, "w", closefd=False)  # noqa: SIM115 -- closed below, after the body
    sys.stderr = open(os.devnull, "w")  # noqa: SIM115 -- closed below, after the body
    try:
        yield stream if real is sys.__stderr__ else real
    finally:
        sys.stderr.close()
        sys.stderr = real
        stream.close()
        os.dup2(saved, 2)
        os.close(saved)


@contextlib.contextmanager
def _size_progress(path: Path, expected: int, desc: str, file: TextIO | None) -> Iterator[None]:
    """A progress bar on ``file`` (none without one) that follows ``path`` growing towards
    ``expected`` bytes while the body runs (llama.cpp's quantizer writes tensor by tensor
    and reports nothing itself)."""
    if file is None:
        yield
        return
    from tqdm.auto import tqdm

    done = threading.Event()
    bar = tqdm(total=expected, desc=desc, unit="B", unit_scale=True, file=file)

    def follow() -> None:
        while not done.wait(0.5):
            with contextlib.suppress(OSError):
                bar.update(min(path.stat().st_size, expected) - bar.n)

    watcher = threading.Thread(target=follow, daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        watcher.join()
        bar.update(expected - bar.n)
        bar.close()
