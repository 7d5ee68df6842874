"""`make ... TORCH_INDEX=URL` installs torch from that index; without it nothing changes.
Dry runs only (make -n): nothing is installed or fetched."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from deploy_files import ROOT

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="no make")

CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def torch_install_line(tmp_path, *overrides: str) -> str:
    venv = tmp_path / "venv"
    out = subprocess.run(
        ["make", "-n", "-B", f"VENV={venv}", *overrides, f"{venv}/.installed"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    (line,) = [ln for ln in out.splitlines() if "install" in ln and '"torch==' in ln]
    return line


def test_default_install_has_no_index_option(tmp_path):
    line = torch_install_line(tmp_path)
    assert line.rstrip().endswith('install --quiet "torch==2.13.0"')
    assert "--index-url" not in line and "--extra-index-url" not in line


def test_torch_index_is_passed_to_pip(tmp_path):
    line = torch_install_line(tmp_path, f"TORCH_INDEX={CPU_INDEX}")
    assert f'"torch==2.13.0" --index-url "{CPU_INDEX}"' in line


def test_readme_documents_the_cpu_only_install():
    assert f"TORCH_INDEX={CPU_INDEX}" in (ROOT / "README.md").read_text()
