"""A real server process with the random tiny model for the hardening tests (reusing
tests/serve/serve_support.py's ``start``/``wait_ready``), with the API key ``KEY``."""

from __future__ import annotations

import pytest
import serve_models  # noqa: E402
from serve_support import KEY, Server, start, stop, wait_ready  # noqa: E402,F401


@pytest.fixture(scope="session")
def hardened_server(tmp_path_factory) -> Server:
    root = tmp_path_factory.mktemp("hardening")
    model_dir = serve_models.save_tiny(root / "tiny")
    log = root / "server.log"
    proc, url = start(model_dir, log, "--context-length", "256", "--max-queue", "64", "--max-body-mb", "1",
                      "--max-tokens", "8", "--no-ui")
    try:
        wait_ready(proc, url, log)
        yield Server(url, model_dir, proc, log)
    finally:
        stop(proc)
