"""The web UI's saved conversations over HTTP (the storage is
:mod:`chatforge.serve.conversations`). Routes, behind the API key like the rest of the UI's:

* ``GET /ui/conversations``: ``{"conversations": [{id, title, mode, created, updated}]}``,
  most recently updated first.
* ``POST /ui/conversations`` ``{title?, mode?}``: a new, empty conversation.
* ``GET /ui/conversations/{id}``: one conversation with its ``messages``.
* ``PUT /ui/conversations/{id}`` ``{title?, mode?, messages?}``: change what is given;
  ``messages`` replaces the whole list.
* ``DELETE /ui/conversations/{id}``: ``{"deleted": true}``.
* ``GET /ui/conversations/{id}/export?format=json|markdown``: a download.

A conversation belongs to the API key it was saved with (see ``owner_of``): another key's
id answers 404 like an unknown one. When the database cannot be used (damaged, newer,
locked) these routes answer 503 ``conversations_unavailable`` naming the file; every other
route, chat included, keeps working.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any, Literal
from urllib.parse import quote

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from chatforge.serve.conversations import (
    DEFAULT_TITLE,
    Conversation,
    ConversationStore,
    ConversationsUnavailable,
    ConversationTooLarge,
    owner_of,
)
from chatforge.serve.errors import APIError
from chatforge.serve.state import Server

MAX_TITLE = 200

Mode = Literal["chat", "tools", "code"]
Title = Annotated[str, Field(max_length=MAX_TITLE)]

router = APIRouter(include_in_schema=False)


class SavedMessage(BaseModel):
    """One message as the page shows it."""

    model_config = ConfigDict(extra="forbid")

    role: Literal["user", "assistant", "system"]
    content: str
    steps: list[dict[str, Any]] | None = None
    """The agent's tool calls, tool results, code, outputs and images, as the page's events."""
    meta: dict[str, Any] | None = None
    """Whatever the page shows beside the message (tokens/s, the model, ...)."""

    def stored(self) -> dict[str, Any]:
        return {k: v for k, v in self.model_dump().items() if v is not None}


class NewConversation(BaseModel):
    model_config = ConfigDict(extra="forbid")

    title: Title = DEFAULT_TITLE
    mode: Mode = "chat"


class ConversationChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    title: Title | None = None
    mode: Mode | None = None
    messages: list[SavedMessage] | None = None


def _store(state: Server) -> ConversationStore:
    return state.ui.conversations


def _owner(request: Request, state: Server) -> str:
    if not state.settings.api_key:
        return ""
    # The key middleware let this request in, so the token is a key the server accepts;
    # hashing the token rather than the setting keeps each key's conversations apart.
    _, _, token = request.headers.get("authorization", "").partition(" ")
    return owner_of(token.strip())


Store = Annotated[ConversationStore, Depends(_store)]
Owner = Annotated[str, Depends(_owner)]


@contextmanager
def _store_errors() -> Iterator[None]:
    try:
        yield
    except ConversationsUnavailable as err:
        raise APIError(503, str(err), code="conversations_unavailable") from None
    except ConversationTooLarge as err:
        raise APIError(413, str(err), param="messages", code="conversation_too_large") from None


def _found(conversation: Conversation | None) -> Conversation:
    if conversation is None:
        raise APIError(
            404,
            "no such conversation (it was deleted, or was saved with another API key)",
            param="id",
            code="conversation_not_found",
        )
    return conversation


# Plain ``def`` routes: FastAPI runs them on its thread pool, so SQLite never blocks the loop.


@router.get("/ui/conversations")
def list_conversations(store: Store, owner: Owner) -> dict[str, Any]:
    with _store_errors():
        return {"conversations": [c.as_dict() for c in store.summaries(owner)]}


@router.post("/ui/conversations")
def create_conversation(store: Store, owner: Owner, body: NewConversation | None = None) -> dict[str, Any]:
    body = body or NewConversation()
    with _store_errors():
        return store.create(owner, body.title, body.mode).as_dict()


@router.get("/ui/conversations/{conversation_id}")
def get_conversation(conversation_id: str, store: Store, owner: Owner) -> dict[str, Any]:
    with _store_errors():
        return _found(store.get(owner, conversation_id)).as_dict()


@router.put("/ui/conversations/{conversation_id}")
def update_conversation(
    conversation_id: str, body: ConversationChange, store: Store, owner: Owner
) -> dict[str, Any]:
    messages = None if body.messages is None else [m.stored() for m in body.messages]
    with _store_errors():
        return _found(
            store.update(owner, conversation_id, title=body.title, mode=body.mode, messages=messages)
        ).as_dict()


@router.delete("/ui/conversations/{conversation_id}")
def delete_conversation(conversation_id: str, store: Store, owner: Owner) -> dict[str, Any]:
    with _store_errors():
        if not store.delete(owner, conversation_id):
            _found(None)
    return {"deleted": True}


@router.get("/ui/conversations/{conversation_id}/export")
def export_conversation(
    conversation_id: str, store: Store, owner: Owner, fmt: Annotated[str, Query(alias="format")] = "json"
) -> Response:
    if fmt not in ("json", "markdown", "md"):
        raise APIError(400, "format: must be 'json' or 'markdown'", param="format", code="invalid_value")
    with _store_errors():
        conversation = _found(store.get(owner, conversation_id))
    if fmt == "json":
        body, media_type, suffix = _json(conversation), "application/json", "json"
    else:
        body, media_type, suffix = to_markdown(conversation), "text/markdown", "md"
    return Response(
        body, media_type=media_type, headers={"Content-Disposition": _attachment(conversation, suffix)}
    )


def _json(conversation: Conversation) -> str:
    return json.dumps(conversation.as_dict(), ensure_ascii=False, indent=2) + "\n"


def _attachment(conversation: Conversation, suffix: str) -> str:
    """``attachment`` with an ASCII file name for every browser and the title in UTF-8 for those
    that read ``filename*``."""
    ascii_name = re.sub(r"[^A-Za-z0-9]+", "-", conversation.title).strip("-")[:60] or "conversation"
    full_name = re.sub(r'[\x00-\x1f\\/:*?"<>|]+', "-", conversation.title).strip(" -.")[:100]
    name = f"{ascii_name}-{conversation.id[:8]}.{suffix}"
    utf8_name = f"{full_name or 'conversation'}-{conversation.id[:8]}.{suffix}"
    return f"attachment; filename=\"{name}\"; filename*=UTF-8''{quote(utf8_name)}"


# -- Markdown ------------------------------------------------------------------------------

_ROLES = {"user": "User", "assistant": "Assistant", "system": "System"}
#: Step fields that carry files (base64): named in the export, never inlined.
_BLOBS = frozenset({"png", "jpeg", "image", "data", "b64_json"})


def to_markdown(conversation: Conversation) -> str:
    """The conversation as Markdown: a ``# title``, then ``**User:**`` / ``**Assistant:**``
    turns; tool calls, results, code and outputs as fenced blocks, images by name."""
    title = " ".join(conversation.title.split()) or DEFAULT_TITLE
    lines = [f"# {title}", ""]
    images = 0
    for message in conversation.messages or []:
        lines += [f"**{_ROLES.get(message.get('role', ''), 'Message')}:**", ""]
        for step in message.get("steps") or []:
            if step.get("type") == "image":
                images += 1
            lines += _step(step, images)
        if message.get("content"):
            lines += [message["content"].rstrip("\n"), ""]
    return "\n".join(lines).rstrip("\n") + "\n"


def _step(step: dict[str, Any], images: int) -> list[str]:
    kind = step.get("type")
    name = str(step.get("name") or "")
    if kind == "text":
        return [str(step.get("text", "")), ""] if step.get("text") else []
    if kind == "final":  # the message's content says it
        return []
    if kind == "tool_call":
        arguments = step.get("arguments")
        text = (
            arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False, indent=2)
        )
        return [f"Tool call `{name}`:", "", *_fenced(text, "json")]
    if kind == "tool_result":
        label = "Tool error" if step.get("is_error") else "Tool result"
        return [f"{label} `{name}`:", "", *_fenced(str(step.get("content", "")))]
    if kind == "code":
        return _fenced(str(step.get("code", "")), "python")
    if kind == "output":
        return ["Output:", "", *_fenced(str(step.get("text", "")))]
    if kind == "image":
        return [f"*[image: {name or f'image-{images}.png'}]*", ""]
    if kind == "error":
        return [f"> Error: {' '.join(str(step.get('message', '')).split())}", ""]
    return _fenced(json.dumps(_without_blobs(step), ensure_ascii=False, indent=2), "json")


def _without_blobs(step: dict[str, Any]) -> dict[str, Any]:
    return {
        k: f"<{len(v)} characters of base64 left out>" if k in _BLOBS and isinstance(v, str) else v
        for k, v in step.items()
    }


def _fenced(text: str, language: str = "") -> list[str]:
    """A fenced block longer than any run of backticks inside, so the text cannot close it."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return [f"{fence}{language}", text.rstrip("\n"), fence, ""]
