"""``chatforge model list | fetch | path`` in-process, on an empty cache."""

import pytest

from chatforge.cli.commands import main
from chatforge.models import embedded
from chatforge.models.embedded import DEFAULT, EMBEDDED, QWEN_CODER_1_5B, EmbeddedModel


@pytest.fixture()
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("CHATFORGE_HOME", str(tmp_path))
    return tmp_path


@pytest.fixture()
def absent(monkeypatch) -> EmbeddedModel:
    """An embedded model none of whose packages is installed, in the registry."""
    spec = EmbeddedModel(
        name="absent-model",
        packages=("no_such_part_package1", "no_such_part_package2"),
        version="0.3.0",
        size=10,
        sha256="0" * 64,
        gguf_name="absent.gguf",
        title="Nothing, Q0",
        aliases=("absent",),
    )
    monkeypatch.setattr(embedded, "EMBEDDED", (*EMBEDDED, spec))
    return spec


def test_list_shows_every_model_with_its_state_and_pip_command(home, absent, capsys):
    assert main(["model", "list"]) == 0
    out = capsys.readouterr().out
    for spec in (DEFAULT, QWEN_CODER_1_5B):
        assert spec.name in out and spec.pip_command() in out
    assert "1,117 MB GGUF in 22 packages of version 0.2.0" in out
    block = out[out.index("absent-model") :]
    assert "(also: absent)" in block
    assert "installed:  no (0 of 2 packages)" in block
    assert "assembled:  no" in block and "converted:  no" in block
    assert "pip install no-such-part-package1==0.3.0 no-such-part-package2==0.3.0" in block


def test_list_says_where_an_assembled_model_is(home, absent, capsys):
    path = embedded.gguf_path(absent)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"0123456789")  # its size
    main(["model", "list"])
    assert f"assembled:  yes, {path}" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, spec", [([], DEFAULT), (["default"], DEFAULT), (["1.5b"], QWEN_CODER_1_5B), (["absent"], None)]
)
def test_path_prints_the_models_cache_directory(home, absent, capsys, argv, spec):
    assert main(["model", "path", *argv]) == 0
    assert capsys.readouterr().out.strip() == str(home / "models" / (spec or absent).name)


def test_an_unknown_name_lists_the_known_ones(home, capsys):
    assert main(["model", "path", "7b"]) == 2
    err = capsys.readouterr().err
    assert "no embedded model is called '7b'" in err and QWEN_CODER_1_5B.name in err


def test_fetch_without_install_names_the_pip_command(home, absent, capsys):
    assert main(["model", "fetch", "absent", "--no-install"]) == 2
    err = capsys.readouterr().err
    assert "absent-model is not installed" in err
    assert absent.pip_command() in err
