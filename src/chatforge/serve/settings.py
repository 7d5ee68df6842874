"""Server settings: one dataclass, filled from the command line (``chatforge serve``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class ServeSettings:
    """How the server behaves; every field has a ``--flag`` of the same name."""

    api_key: str | None = None
    """Required as ``Authorization: Bearer <key>`` on every route but /health and the UI page."""
    model_id: str | None = None
    """The id /v1/models reports (default: the model's name). ``"default"`` is always accepted too."""
    cors_origins: list[str] = field(default_factory=list)
    """Origins allowed to call the API from a browser (``*`` for any)."""
    max_queue: int = 16
    """Requests waiting for the engine beyond this get 503 (with Retry-After)."""
    request_timeout: float = 300.0
    """Seconds a request may wait and generate before it is cancelled."""
    workers: int | None = None  # None: the engine's batch size (the UI's agent turns have their own)
    """Generation threads; engines are single-stream today, so more only helps batching engines."""
    default_max_tokens: int | None = None
    """max_tokens when a request gives none (None: the rest of the context window)."""
    max_body_bytes: int | None = 8 * 1024 * 1024
    """Request bodies larger than this get 413 (None: no limit)."""
    ui: bool = True
    """Serve the web UI at ``/``."""
    conversations_db: Path | None = None
    """The SQLite file of the web UI's saved conversations (None:
    ``$CHATFORGE_HOME/ui/conversations.sqlite3``); made on first use, never with ``ui=False``."""
    batch_wait_ms: float | None = None
    """Milliseconds a batching engine, idle, waits for requests sent together before it
    starts them (None: the engine's default, 5; 0: start each at once)."""
