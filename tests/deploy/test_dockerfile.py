"""deploy/Dockerfile read as the build reads it (no container engine here): what it copies is
in the build context, it builds llama.cpp as the Makefile does plus run-time CPU selection,
torch is the CPU build, the image runs as a non-root user on the port and /health route the
server has, and the server answers /health without the API key the rest requires."""

from __future__ import annotations

import re
import tomllib

import pytest
from deploy_files import DOCKERFILE, ROOT, dockerfile_instructions, env_of, exec_form, in_context

INSTRUCTIONS = dockerfile_instructions()


def _one(keyword: str, stage: str = "runtime") -> str:
    (value,) = [i.value for i in INSTRUCTIONS if i.keyword == keyword and i.stage == stage]
    return value


def _args() -> dict[str, str]:
    out = {}
    for i in INSTRUCTIONS:
        if i.keyword == "ARG":
            name, _, default = i.value.partition("=")
            out[name] = default
    return out


def _runs(stage: str = "builder") -> str:
    return "\n".join(i.value for i in INSTRUCTIONS if i.keyword == "RUN" and i.stage == stage)


def test_stages_and_a_replaceable_base():
    froms = [i.value for i in INSTRUCTIONS if i.keyword == "FROM"]
    assert froms == ["${BASE_IMAGE} AS base", "base AS builder", "base AS runtime"]
    assert _args()["BASE_IMAGE"] == "python:3.11-slim"
    # the last stage is the image: it copies the environment, not the compilers
    assert INSTRUCTIONS[-1].stage == "runtime"
    copies = [i.value for i in INSTRUCTIONS if i.keyword == "COPY" and i.stage == "runtime"]
    assert copies == ["--from=builder /opt/chatforge/venv /opt/chatforge/venv"]


def test_everything_copied_is_in_the_build_context():
    sources = []
    for i in INSTRUCTIONS:
        if i.keyword == "COPY" and not i.value.startswith("--from"):
            *srcs, _dest = i.value.split()
            sources += srcs
    assert sources
    for src in sources:
        path = ROOT / src
        assert path.exists(), src
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        wanted = [p for p in files if "__pycache__" not in p.parts and not p.name.endswith(".pyc")]
        assert wanted, src
        for p in wanted:
            rel = p.relative_to(ROOT).as_posix()
            if rel.endswith(".whl") or ".egg-info" in rel:
                continue
            assert in_context(rel), f"{rel} is copied but .dockerignore leaves it out"
    # the package's data files go in too (templates, the web UI)
    for rel in ("src/chatforge/__init__.py", "src/chatforge/serve/app.py", "pyproject.toml", "README.md"):
        assert in_context(rel), rel
    assert [p for p in (ROOT / "src/chatforge").rglob("*.html")], "no web UI files?"
    assert all(in_context(p.relative_to(ROOT).as_posix()) for p in (ROOT / "src/chatforge").rglob("*.html"))
    # and what the image does not need stays out
    for rel in (".venv/bin/python", ".git/HEAD", "tests/conftest.py", "docs/deployment.md"):
        assert not in_context(rel), rel


def test_llama_cpp_is_built_as_the_makefile_builds_it_for_any_x86_64_cpu():
    makefile = (ROOT / "Makefile").read_text()
    version = re.search(r"^LLAMA_CPP_VERSION := (\S+)", makefile, re.M).group(1)
    assert _args()["LLAMA_CPP_VERSION"] == version
    assert (ROOT / "patches" / f"llama-cpp-python-{version}").is_dir()
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert f"llama-cpp-python=={version}" in pyproject["project"]["optional-dependencies"]["llama"]
    runs = _runs()
    assert "scripts/build-llama-cpp.sh" in runs  # the patches, applied as make does
    cmake_args = re.search(r'CMAKE_ARGS="([^"]*)"', runs).group(1)
    for flag in (
        "-DGGML_OPENMP=OFF",  # as the Makefile: no libgomp clash with PyTorch
        "-DGGML_NATIVE=OFF",  # not the build machine's CPU
        "-DGGML_BACKEND_DL=ON",  # CPU backends loaded at run time
        "-DGGML_CPU_ALL_VARIANTS=ON",  # one for each x86-64 level; the best is picked
        r"-DCMAKE_CXX_FLAGS=-fno-tree-dse\ -fno-dse",  # the AMX variant's tile config kept
    ):
        assert flag in cmake_args, flag
    assert r"-DCMAKE_CXX_FLAGS=-fno-tree-dse\ -fno-dse" in makefile
    # the variants are looked for where they are installed
    assert "-DGGML_BACKEND_DIR=$lib" in cmake_args and 'lib="$(python' in runs


def test_torch_is_the_cpu_build_of_the_pinned_version():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    (pin,) = [d for d in pyproject["project"]["dependencies"] if d.startswith("torch")]
    assert pin == "torch==2.13.0"
    runs = _runs()
    assert '"torch==2.13.0+cpu"' in runs  # only the CPU index has it: never the CUDA build
    assert _args()["TORCH_INDEX"] == "https://download.pytorch.org/whl/cpu"
    assert '${TORCH_INDEX:+--extra-index-url "$TORCH_INDEX"}' in runs
    torch_step = runs.index("torch==2.13.0+cpu")
    assert (
        torch_step < runs.index("build-llama-cpp.sh") < runs.index('pip install "/build/chatforge[$EXTRAS]"')
    )


def test_chatforge_is_installed_with_the_default_model():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    extras = _args()["EXTRAS"].split(",")
    assert "default-model" in extras and "llama" in extras
    assert set(extras) <= set(pyproject["project"]["optional-dependencies"])


def test_the_image_runs_as_a_numeric_non_root_user():
    user = _one("USER")
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) != 0 and gid.isdigit() and int(gid) != 0
    setup = _runs("runtime")
    assert f"--uid {uid}" in setup and f"--gid {gid}" in setup
    env = env_of(INSTRUCTIONS, "runtime")
    # its writable directories exist and are its own (volumes mounted there start like that)
    for var in ("HOME", "CHATFORGE_HOME"):
        assert env[var] in setup and f"-o {uid} -g {gid}" in setup
    assert env["HF_HUB_OFFLINE"] == "1"
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"  # a read-only root: no .pyc writes


def test_entrypoint_serves_the_default_model_on_the_exposed_port():
    from chatforge.cli.commands import build_parser

    entry = exec_form(_one("ENTRYPOINT"))
    cmd = exec_form(_one("CMD"))
    assert entry == ["chatforge"]
    args = build_parser().parse_args(cmd)
    assert args.command == "serve" and args.model == "default"
    assert args.host == "0.0.0.0"
    assert _one("EXPOSE") == str(args.port)


def test_healthcheck_polls_health_on_the_served_port():
    from chatforge.serve.app import PUBLIC_PATHS

    check = _one("HEALTHCHECK")
    cmd = exec_form(_one("CMD"))
    port = cmd[cmd.index("--port") + 1]
    assert f"http://127.0.0.1:{port}/health" in check
    assert "/health" in PUBLIC_PATHS
    assert (
        re.search(r"--start-period=(\d+)s", check)
        and int(re.search(r"--start-period=(\d+)s", check).group(1)) >= 300
    )


def test_health_is_public_and_the_api_needs_the_key(tiny_chat):
    """What the probes and HEALTHCHECK rely on: /health answers without the API key, the API
    does not."""
    from fastapi.testclient import TestClient

    from chatforge.serve.app import create_app
    from chatforge.serve.settings import ServeSettings

    with TestClient(create_app(tiny_chat, ServeSettings(api_key="s3cret", ui=False))) as client:
        health = client.get("/health")
        assert health.status_code == 200 and health.json()["status"] == "ok"
        assert client.get("/v1/models").status_code == 401
        ok = client.get("/v1/models", headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200


def test_serve_reads_the_api_key_from_the_environment(monkeypatch):
    from chatforge.cli.commands import build_parser
    from chatforge.cli.serve import settings_from_args
    from chatforge.env import API_KEY as API_KEY_ENV

    assert API_KEY_ENV == "CHATFORGE_API_KEY"
    monkeypatch.setenv(API_KEY_ENV, "from-the-secret")
    args = build_parser().parse_args(exec_form(_one("CMD")))
    assert settings_from_args(args).api_key == "from-the-secret"


def test_dockerignore_rules_behave_like_dockers():
    # the matcher the tests above trust
    assert not in_context("anything.txt")
    assert in_context("src/chatforge/cli.py")
    assert not in_context("src/chatforge/__pycache__/cli.cpython-311.pyc")
    assert in_context("deploy/wheels/README.md") and not in_context("deploy/Dockerfile")


@pytest.mark.parametrize("name", [".dockerignore", "deploy/wheels/README.md"])
def test_build_files_are_tracked(name):
    assert (ROOT / name).is_file()
    assert DOCKERFILE.is_file()
