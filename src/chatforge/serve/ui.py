"""The web UI: one hand-written page (HTML, CSS, JS in ``static/``) served by the same app.

The page talks to the OpenAI-compatible API with streaming, so the UI exercises exactly
what clients use. Tool and Code Interpreter modes go through the agent loop
(``chatforge.agent.loop``) at ``POST /ui/agent`` when that module exists; without it the
page shows those modes as unavailable.
"""

from __future__ import annotations

import base64
import dataclasses
import importlib.util
import json
import logging
import threading
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles

from chatforge.serve.errors import APIError

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"


def agent_available() -> bool:
    return importlib.util.find_spec("chatforge.agent.loop") is not None


def mount_ui(app: FastAPI, model_id: str) -> None:
    app.mount("/ui/static", StaticFiles(directory=STATIC), name="ui-static")

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/ui/config", include_in_schema=False)
    async def config() -> dict[str, Any]:
        settings = app.state.settings
        return {
            "model": model_id,
            "auth": bool(settings.api_key),
            "modes": ["chat", "tools", "code"] if agent_available() else ["chat"],
        }

    @app.post("/ui/agent", include_in_schema=False)
    async def agent(request: Request) -> StreamingResponse:
        # The hook for Tool and Code modes: runs the agent loop and streams its events as SSE.
        if not agent_available():
            raise APIError(501, "tool and code modes need the agent loop (chatforge.agent.loop), not in this build")
        body = await request.json()
        return StreamingResponse(_agent_events(app, body), media_type="text/event-stream")


async def _agent_events(app: FastAPI, body: dict[str, Any]) -> Any:
    """Agent events as SSE ``data:`` lines; bytes (images) are base64, the rest as JSON."""
    from chatforge.agent.loop import Agent  # type: ignore[import-not-found]
    from chatforge.messages import from_openai

    mode = body.get("mode", "tools")
    messages = from_openai(body.get("messages", []))
    params = {k: v for k, v in (body.get("params") or {}).items() if v is not None}
    agent = Agent(app.state.model, mode=mode)
    cancel = threading.Event()

    def run(stop: threading.Event) -> Any:
        yield from agent.stream(messages, **params)

    job = app.state.worker.submit(run)
    try:
        async for event in job.events():
            yield f"data: {json.dumps(_event_dict(event), ensure_ascii=False)}\n\n"
    finally:
        cancel.set()
        job.cancel.set()
    yield "data: [DONE]\n\n"


def _event_dict(event: Any) -> dict[str, Any]:
    data = dataclasses.asdict(event) if dataclasses.is_dataclass(event) else dict(vars(event))
    out: dict[str, Any] = {"type": type(event).__name__}
    for key, value in data.items():
        if isinstance(value, bytes):
            out[key] = base64.b64encode(value).decode()
        else:
            try:
                json.dumps(value)
                out[key] = value
            except TypeError:
                out[key] = str(value)
    return out
