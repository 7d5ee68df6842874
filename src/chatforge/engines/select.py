"""Choosing an engine for a model and a machine, and building the non-transformers ones.

``--engine auto`` picks, from what was measured (docs/benchmarks.md):

* ``remote`` when a remote URL is given;
* ``llama.cpp``/``hybrid`` (as below) when ``--quantize`` names a GGUF weight type;
* ``transformers`` when an adapter is attached, weights are quantized with bitsandbytes,
  a device map is given, or the device is a GPU (its kernels beat llama.cpp's CPU path
  there, and adapters/training need the torch module);
* ``hybrid`` on a CPU with bf16 matrix units (AMX or AVX512-BF16) when the model is a
  GGUF file whose Hugging Face weights are at hand (an embedded model, or
  ``prefill_model`` given): llama.cpp's decode with transformers' bf16 prefill
  (:mod:`chatforge.engines.hybrid`), the fastest at both;
* ``llama.cpp`` on other CPUs when the model exists as a GGUF file and llama-cpp-python
  is installed: it decodes about twice as fast as transformers;
* ``transformers`` otherwise.

Quantization for transformers (``--quantize int8|int4``) uses bitsandbytes and needs CUDA.
GGUF files carry their own quantization level, which llama.cpp uses as it is (with its AMX
path, opted into, Q5_0 matrices are rewritten as Q8_0 with the same values for the AMX
kernels, see :mod:`chatforge.engines.amx`), unless ``--quantize q4_0|iq4_nl|q8_0`` asks for the file
re-quantized (once, cached; see :func:`chatforge.models.gguf.export.requantized`).
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chatforge.engines.amx import preferred_gguf
from chatforge.engines.speculative import parse_speculation
from chatforge.llama_lib import import_llama_cpp
from chatforge.models.embedded import (
    assemble_gguf,
    cache_dir,
    ensure_hf_dir,
    file_key,
    find_embedded,
    gguf_path,
    is_converted,
)
from chatforge.models.gguf.export import REQUANTIZE_TYPES, requantized
from chatforge.tokenizer import Tokenizer

log = logging.getLogger(__name__)

ENGINES = ("auto", "transformers", "llama.cpp", "hybrid", "remote")
QUANTIZE = ("int8", "int4")  # bitsandbytes, for transformers
GGUF_QUANTIZE = REQUANTIZE_TYPES  # llama.cpp re-quantizes the GGUF
# RemoteEngine's connection knobs (the CLI's --remote-max-tries and co.) among engine options.
REMOTE_OPTIONS = ("max_tries", "backoff", "connect_timeout", "read_timeout")


@dataclass
class BuiltEngine:
    engine: Any
    tokenizer: Tokenizer
    name: str


def llama_cpp_available() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None


def normalise_engine(engine: str | None) -> str:
    name = (engine or "auto").lower().replace("_", ".")
    aliases = {"llamacpp": "llama.cpp", "llama": "llama.cpp", "hf": "transformers", "openai": "remote"}
    name = aliases.get(name, name)
    if name not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; use one of {', '.join(ENGINES)}")
    return name


def gguf_for(ref: str | Path) -> Path | None:
    """The GGUF file a reference stands for, if there is one (without assembling anything:
    an embedded model's file is assembled from its packages on demand, by :func:`resolve_gguf`)."""
    spec = find_embedded(ref)
    if spec is not None:
        return gguf_path(spec)
    path = Path(str(ref)).expanduser()
    if path.is_file() and path.suffix.lower() == ".gguf":
        return path
    if path.is_dir() and not (path / "config.json").exists():
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return ggufs[0]
    return None


def choose_engine(
    ref: str | Path,
    engine: str | None = "auto",
    *,
    device: str | None = "auto",
    adapter: Any = None,
    quantize: str | None = None,
    device_map: Any = None,
    remote_url: str | None = None,
    prefill_model: str | Path | None = None,
) -> str:
    """The engine to use for this model on this machine (see the module docstring)."""
    name = normalise_engine(engine)
    if quantize in GGUF_QUANTIZE:
        return _engine_for_gguf_quantize(ref, name, quantize, prefill_model)
    if name != "auto":
        return name
    if remote_url:
        return "remote"
    if adapter is not None or quantize or device_map is not None:
        return "transformers"
    dev = (device or "auto").lower()
    if dev.startswith(("cuda", "mps")):
        return "transformers"
    if dev == "auto":
        import torch

        if torch.cuda.is_available():
            return "transformers"
    if gguf_for(ref) is not None and llama_cpp_available():
        if hybrid_fits(ref, prefill_model):
            return "hybrid"
        return "llama.cpp"
    return "transformers"


def _engine_for_gguf_quantize(ref: str | Path, name: str, quantize: str, prefill_model: Any) -> str:
    """The engine for a re-quantized GGUF: llama.cpp's or the hybrid; an error for others."""
    if name not in ("auto", "llama.cpp", "hybrid"):
        raise ValueError(
            f"--quantize {quantize} re-quantizes a GGUF file for llama.cpp; use --engine llama.cpp or hybrid "
            f"(not {name}), or --quantize int8|int4 for transformers on CUDA"
        )
    if gguf_for(ref) is None:
        raise ValueError(f"--quantize {quantize} re-quantizes a GGUF file, and {str(ref)!r} is not one")
    if not llama_cpp_available():
        raise ValueError(f"--quantize {quantize} needs llama-cpp-python (make install builds it)")
    if name != "auto":
        return name
    return "hybrid" if hybrid_fits(ref, prefill_model) else "llama.cpp"


def hybrid_fits(ref: str | Path, prefill_model: str | Path | None = None) -> bool:
    """Whether the hybrid engine is the fastest here: bf16 matrix units and HF weights at hand."""
    from chatforge.models.device import cpu_has_bf16  # PyTorch

    return cpu_has_bf16() and (prefill_model is not None or find_embedded(ref) is not None)


def prefill_weights(ref: str | Path, prefill_model: str | Path | None) -> Path:
    """The Hugging Face weights the hybrid engine prefills with."""
    if prefill_model is not None:
        path = Path(prefill_model).expanduser()
        if not (path / "config.json").exists():
            raise ValueError(f"--prefill-model {path} is not a Hugging Face model directory (no config.json)")
        return path
    spec = find_embedded(ref)
    if spec is not None:
        return ensure_hf_dir(spec)
    raise ValueError(
        f"engine 'hybrid' needs {str(ref)!r}'s weights as a Hugging Face directory for its prefill: "
        "pass --prefill-model DIR (the same model, unquantized), or use --engine llama.cpp"
    )


def build_engine(
    ref: str | Path,
    engine: str,
    *,
    adapter: Any = None,
    context_length: int | None = None,
    remote_url: str | None = None,
    remote_model: str | None = None,
    remote_api_key: str | None = None,
    options: dict[str, Any] | None = None,
    quantize: str | None = None,
) -> BuiltEngine:
    """A llama.cpp, hybrid or remote engine with the tokenizer of ``ref``; ``quantize`` (a
    GGUF weight type) re-quantizes the GGUF file the llama.cpp engines decode with."""
    options = dict(options or {})
    # Each engine brings its runtime (httpx, llama.cpp, PyTorch): imported when it is built.
    if engine == "remote":
        from chatforge.engines.remote import RemoteEngine

        if not remote_url:
            raise ValueError("engine 'remote' needs a URL: --remote-url http://host:port/v1")
        if adapter is not None:
            raise ValueError("adapters cannot be attached to a remote engine; serve the merged model there")
        tokenizer, name = load_tokenizer(ref)
        for local_only in ("n_parallel", "n_threads", "prefill_model", "speculative"):  # the server decides these
            options.pop(local_only, None)
        remote = RemoteEngine(
            remote_url,
            tokenizer,
            model=remote_model,
            api_key=remote_api_key,
            context_length=context_length,
            **options,
        )
        return BuiltEngine(remote, tokenizer, remote.model)
    if engine in ("llama.cpp", "hybrid"):
        import_llama_cpp()  # a clear error before anything heavy when it is not installed
        from chatforge.engines.llamacpp import LlamaCppEngine

        if adapter is not None:
            raise ValueError(
                f"the {engine} engine cannot attach PEFT adapters; use --engine transformers, "
                "or merge the adapter (chatforge export) and convert the result to GGUF"
            )
        for remote_only in REMOTE_OPTIONS:  # given with a --remote-url that is not used here
            options.pop(remote_only, None)
        prefill = options.pop("prefill_model", None)
        prefill = prefill_weights(ref, prefill) if engine == "hybrid" else None
        speculation = parse_speculation(options.pop("speculative", None))
        if speculation.mode == "draft":  # a model name (0.5b) or a GGUF path: the draft's GGUF file
            options["speculative"] = f"draft:{resolve_gguf(speculation.draft_model)}"
        else:
            options["speculative"] = str(speculation)
        gguf = resolve_gguf(ref, quantize)
        tokenizer, name = load_tokenizer(ref)
        if engine == "hybrid":
            from chatforge.engines.hybrid import HybridEngine

            built = HybridEngine(gguf, tokenizer, prefill, context_length=context_length, **options)
        else:
            built = LlamaCppEngine(gguf, tokenizer, context_length=context_length, **options)
        return BuiltEngine(built, tokenizer, name)
    raise ValueError(f"build_engine does not build {engine!r} engines")


def resolve_gguf(ref: str | Path, quantize: str | None = None) -> Path:
    """The GGUF file of ``ref`` (an embedded model assembled on first use), re-quantized
    when ``quantize`` names a GGUF weight type; else, where llama.cpp's AMX path is asked for
    and works, with its Q5_0 matrices as Q8_0, the same weights (:func:`chatforge.engines.amx.preferred_gguf`)."""
    gguf = gguf_for(ref)
    if gguf is None:
        raise ValueError(
            f"the llama.cpp engine needs a .gguf file and {str(ref)!r} is not one; "
            "pass a .gguf file or use --engine transformers"
        )
    spec = find_embedded(ref)
    if spec is not None:
        gguf = assemble_gguf(spec)
    if quantize is None:
        return preferred_gguf(gguf)

    return requantized(gguf, quantize)


def load_tokenizer(ref: str | Path) -> tuple[Any, str]:
    """The Hugging Face tokenizer (with chat template) for a model reference, without weights."""
    from transformers import AutoTokenizer

    text = str(ref)
    spec = find_embedded(ref)
    if spec is not None:
        # The converted directory's tokenizer was read from the same GGUF: either will do, and
        # the llama.cpp engine should not need the conversion.
        if is_converted(spec):
            return AutoTokenizer.from_pretrained(ensure_hf_dir(spec), local_files_only=True), spec.name
        return gguf_tokenizer(assemble_gguf(spec)), spec.name
    path = Path(text).expanduser()
    gguf = gguf_for(path)
    if gguf is not None:
        return gguf_tokenizer(gguf), gguf.stem
    if path.is_dir():
        return AutoTokenizer.from_pretrained(path, local_files_only=True), path.name
    raise FileNotFoundError(
        f"no tokenizer at {text!r}: pass 'default', an embedded model's name, a model or tokenizer "
        "directory, or a .gguf file"
    )


def gguf_tokenizer(gguf: Path) -> Any:
    """The tokenizer built from a GGUF file's metadata, cached: building it takes seconds,
    loading the saved copy milliseconds."""
    from transformers import AutoTokenizer

    cached = cache_dir() / "tokenizers" / f"{gguf.stem}-{file_key(gguf)}"
    if (cached / "tokenizer_config.json").exists():
        return AutoTokenizer.from_pretrained(cached, local_files_only=True)
    log.info("reading the tokenizer of %s (once)", gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)
    try:
        tokenizer.save_pretrained(cached)
    except OSError as err:
        log.warning("could not cache the tokenizer of %s: %s", gguf.name, err)
    return tokenizer


# -- quantization and device maps (transformers) --------------------------------------
def quantization_config(quantize: str | None, device: str | None) -> Any:
    """A bitsandbytes config for ``--quantize``; a clear error where it cannot work."""
    if quantize is None:
        return None
    if quantize not in QUANTIZE:
        raise ValueError(
            f"unknown quantization {quantize!r} for transformers; use int8 or int4 (bitsandbytes, CUDA), "
            f"or {', '.join(GGUF_QUANTIZE)} with --engine llama.cpp or hybrid"
        )
    import torch

    dev = (device or "auto").lower()
    if dev.startswith("cpu") or dev == "mps" or not torch.cuda.is_available():
        raise ValueError(
            f"--quantize {quantize} uses bitsandbytes, which needs a CUDA GPU; on CPU use a quantized "
            "GGUF file with --engine llama.cpp (the default model is already Q4_K_M; --quantize iq4_nl "
            "re-quantizes it)"
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ValueError(f"--quantize {quantize} needs bitsandbytes: pip install bitsandbytes")
    from transformers import BitsAndBytesConfig

    if quantize == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_compute_dtype=torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16,
        bnb_4bit_use_double_quant=True,
    )


def load_quantized_weights(
    source: Any,
    *,
    quantize: str | None,
    device: str | None,
    dtype: str | None,
    device_map: Any = None,
) -> tuple[Any, Any]:
    """(model, tokenizer) loaded with bitsandbytes quantization and/or a device map."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from chatforge.models.device import resolve_device, resolve_dtype  # PyTorch

    if source.kind != "hf":
        raise ValueError(
            f"--quantize/--device-map need a Hugging Face model directory; {source.path} is {source.kind}"
        )
    config = quantization_config(quantize, device)
    dev = resolve_device(device if device_map is None else "auto")
    kwargs: dict[str, Any] = {"dtype": resolve_dtype(dtype, dev), "local_files_only": True}
    if config is not None:
        kwargs["quantization_config"] = config
    kwargs["device_map"] = device_map if device_map is not None else ("auto" if config is not None else None)
    log.info("loading %s with quantize=%s device_map=%s", source.name, quantize, kwargs["device_map"])
    model = AutoModelForCausalLM.from_pretrained(source.path, **kwargs).eval()
    tokenizer = AutoTokenizer.from_pretrained(source.path, local_files_only=True)
    return model, tokenizer
