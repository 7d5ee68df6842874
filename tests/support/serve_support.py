"""Real server processes for the serve tests, started once per session on free loopback ports.

``chat_server``: the random tiny model with a LoRA adapter attached (``--adapter``) and a
256-token context window; ``tool_server``: the scripted tiny model that always calls
``get_weather`` (see serve_models.py), which its web UI's Tool mode also offers (``--tools``).
``code_server`` (started only when a test needs it): the scripted tiny model that always
writes a ```python block that plots, for the UI's Code mode, with ``--workdir``. All
require the API key ``KEY``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import serve_models as models  # noqa: E402

KEY = "test-key-7d1f"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent


@dataclass
class Server:
    url: str
    model_dir: Path
    process: subprocess.Popen
    log: Path
    workdir: Path | None = None  # --workdir, where the UI's code sessions keep their files

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def client(self, **kwargs):
        import openai

        return openai.OpenAI(base_url=self.base_url, api_key=KEY, max_retries=0, **kwargs)

    def metrics(self) -> str:
        return httpx.get(f"{self.url}/metrics", headers={"Authorization": f"Bearer {KEY}"}).text


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(model_dir: Path, log: Path, *extra: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CHATFORGE_API_KEY": KEY, "TOKENIZERS_PARALLELISM": "false"}
    # So that ``--tools serve_models:get_weather`` imports this directory's serve_models.py (and tiny.py).
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), str(HERE.parent), env.get("PYTHONPATH")]))
    cmd = [sys.executable, "-m", "chatforge.cli", "serve", "--model", str(model_dir), "--port", str(port),
           "--device", "cpu", "--dtype", "float32",
           "--conversations-db", str(log.with_suffix(".sqlite3")), *extra]  # not the user's
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    return proc, f"http://127.0.0.1:{port}"


def wait_ready(proc: subprocess.Popen, url: str, log: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"server did not start in {timeout} s:\n{log.read_text()[-3000:]}")


def stop(*procs: subprocess.Popen) -> None:
    """Terminate server processes, killing any that do not exit within 10 s."""
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()


@pytest.fixture(scope="session")
def serve_models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("serve-models")
    tiny = models.save_tiny(root / "tiny")
    return {
        "tiny": tiny,
        "adapter": models.save_adapter(tiny, root / "lora"),
        "scripted": models.save_scripted(root / "scripted"),
    }


@pytest.fixture(scope="session")
def servers(serve_models, tmp_path_factory):
    logs = tmp_path_factory.mktemp("serve-logs")
    chat_proc, chat_url = start(
        serve_models["tiny"], logs / "chat.log", "--adapter", str(serve_models["adapter"]),
        "--context-length", "256", "--max-queue", "32",
    )
    tool_proc, tool_url = start(
        serve_models["scripted"], logs / "tool.log", "--served-model-name", "scripted",
        "--tools", "serve_models:get_weather",
    )
    procs = [chat_proc, tool_proc]
    try:
        wait_ready(chat_proc, chat_url, logs / "chat.log")
        wait_ready(tool_proc, tool_url, logs / "tool.log")
        yield {
            "chat": Server(chat_url, serve_models["tiny"], chat_proc, logs / "chat.log"),
            "tool": Server(tool_url, serve_models["scripted"], tool_proc, logs / "tool.log"),
        }
    finally:
        stop(*procs)


@pytest.fixture(scope="session")
def chat_server(servers) -> Server:
    return servers["chat"]


@pytest.fixture(scope="session")
def tool_server(servers) -> Server:
    return servers["tool"]


@pytest.fixture(scope="session")
def code_server(tmp_path_factory) -> Server:
    root = tmp_path_factory.mktemp("serve-code")
    model_dir = models.save_code_scripted(root / "model")
    log = root / "code.log"
    proc, url = start(model_dir, log, "--served-model-name", "coder", "--workdir", str(root / "work"))
    try:
        wait_ready(proc, url, log)
        yield Server(url, model_dir, proc, log, workdir=root / "work")
    finally:
        stop(proc)


@pytest.fixture(scope="module")
def browser():
    """Debian's chromium driven by Playwright, one per test module (import it into the module)."""
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium is not installed (apt-get install -y chromium; make test does it)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        yield b
        b.close()
