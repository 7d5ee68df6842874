"""chatforge's app served from a thread of this process on a free loopback port.

For the bench (the server measured next to the engine it wraps) and for tests that need a
real HTTP server around an in-process model; ``chatforge serve`` runs uvicorn itself.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def serve_in_thread(app: Any, start_timeout: float = 30.0) -> Iterator[str]:
    """Run ``app`` under uvicorn on 127.0.0.1; yields its base URL (``http://127.0.0.1:PORT``)
    once it accepts connections, and stops it on exit."""
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="chatforge-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        if not server.started:
            raise RuntimeError(f"the server on 127.0.0.1:{port} did not start within {start_timeout:g} s")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
