"""Server-Sent Events: the framing every streaming route uses, and the response that carries it."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi.responses import StreamingResponse

#: No caching, and no buffering by a reverse proxy (nginx honours X-Accel-Buffering).
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
DONE = "data: [DONE]\n\n"


def sse(data: Any) -> str:
    """One SSE event holding ``data`` as JSON (non-ASCII text kept as it is)."""
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


def event_stream(lines: AsyncIterator[str]) -> StreamingResponse:
    """A ``text/event-stream`` response of already framed ``lines``."""
    return StreamingResponse(lines, media_type="text/event-stream", headers=SSE_HEADERS)
