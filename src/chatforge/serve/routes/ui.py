"""The web UI: one hand-written page (HTML, CSS, JS in ``static/``) served by the same app,
and the routes of its Tool and Code Interpreter modes.

Chat mode talks to the OpenAI-compatible API with streaming, so the UI exercises exactly
what clients use. Tool and Code Interpreter modes run the agent loop on the server
(:mod:`chatforge.serve.agent_sessions`, :mod:`chatforge.serve.agent_turn`). Routes (all
behind the API key, like the API):

* ``POST /ui/agent``: run one user turn; the agent's events stream back as SSE JSON
  (``{"type": "text" | "tool_call" | "tool_result" | "code" | "output" | "image" |
  "final" | "error", ...}``, images as base64 PNG).
* ``POST /ui/upload``: put a file (JSON, base64 data) into the conversation's code session.
* ``POST /ui/clear``: forget a conversation (its agent and its kernel).

The loop blocks (generation, tools, code), so it runs as a job on a worker pool of its own
(``AgentOptions.agent_workers`` threads, a queue of ``max_sessions``): a long code execution
never takes a thread from the API's generation workers. A client that goes away cancels the
turn between steps.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles

from chatforge.serve.agent_sessions import AGENT_MODES
from chatforge.serve.agent_turn import AgentTurn, conversation_id, run_turn
from chatforge.serve.errors import APIError
from chatforge.serve.runner import submit, watch_disconnect
from chatforge.serve.sse import DONE, event_stream, sse
from chatforge.serve.state import Server
from chatforge.serve.worker import Job

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent.parent / "static"


#: The page's own files, mounted at ``/ui/static``.
static_files = StaticFiles(directory=STATIC)

router = APIRouter(include_in_schema=False)


@router.get("/")
async def index() -> FileResponse:
    return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


@router.get("/ui/config")
async def config(state: Server) -> dict[str, Any]:
    options = state.ui.options
    return {
        "model": state.model_id,
        "auth": bool(state.settings.api_key),
        "modes": ["chat", *AGENT_MODES],
        "conversations": True,  # saved on the server: /ui/conversations
        "max_rounds": options.max_rounds,
        "max_upload_bytes": options.max_upload_bytes,
    }


@router.post("/ui/agent")
async def agent(request: Request, state: Server) -> StreamingResponse:
    ui = state.ui
    turn = AgentTurn.parse(await _json_body(request), ui.options, state.settings.default_max_tokens)
    session = await asyncio.to_thread(ui.sessions.get, turn.conversation, turn.mode)
    if session.lock.locked():
        raise APIError(409, "this conversation is still answering; stop it or wait", code="conversation_busy")
    job = submit(ui.turns, lambda cancel: run_turn(session, turn, cancel))
    return event_stream(_events(request, job))


@router.post("/ui/upload")
async def upload(request: Request, state: Server) -> dict[str, Any]:
    ui = state.ui
    limit = ui.options.max_upload_bytes
    length = int(request.headers.get("content-length") or 0)
    if length > limit * 4 // 3 + 4096:
        raise APIError(413, f"the file is larger than {limit} bytes", code="too_large")
    body = await _json_body(request)
    conversation = conversation_id(body)
    name = body.get("name")
    if not isinstance(name, str) or not name:
        raise APIError(400, "name: the file name is required", param="name", code="invalid_value")
    try:
        data = base64.b64decode(str(body.get("data", "")), validate=True)
    except (binascii.Error, ValueError):
        raise APIError(
            400, "data: must be the file's bytes in base64", param="data", code="invalid_value"
        ) from None
    session = await asyncio.to_thread(ui.sessions.get, conversation, "code")
    try:
        await asyncio.to_thread(session.agent.upload, name, data)
    except ValueError as err:  # a path outside the session directory, or too large
        raise APIError(400, str(err), param="name", code="invalid_value") from None
    files = await asyncio.to_thread(session.agent.code_session.files)
    return {"name": name, "size": len(data), "files": [{"name": f.name, "size": f.size} for f in files]}


@router.post("/ui/clear")
async def clear(request: Request, state: Server) -> dict[str, Any]:
    conversation = conversation_id(await _json_body(request))
    return {"cleared": await asyncio.to_thread(state.ui.sessions.clear, conversation)}


async def _json_body(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise APIError(400, "the request body must be JSON", code="invalid_json") from None
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object", code="invalid_json")
    return body


async def _events(request: Request, job: Job) -> AsyncIterator[str]:
    """The turn's events as SSE; a client that goes away cancels it (the current step finishes)."""
    watcher = asyncio.create_task(watch_disconnect(request, job))
    try:
        async for item in job.events():
            yield sse(item)
    except Exception as err:  # noqa: BLE001 - reported to the page, which is mid-stream
        log.exception("agent stream failed")
        yield sse({"type": "error", "message": str(err)})
    finally:
        watcher.cancel()
        job.cancel.set()
    yield DONE
