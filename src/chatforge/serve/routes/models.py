"""``/v1/models``: the one model this server serves."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from chatforge.serve.state import Server, ServerState

router = APIRouter()


def model_card(state: ServerState) -> dict[str, Any]:
    return {"id": state.model_id, "object": "model", "created": state.created, "owned_by": "chatforge"}


@router.get("/v1/models")
async def list_models(state: Server) -> dict[str, Any]:
    return {"object": "list", "data": [model_card(state)]}


@router.get("/v1/models/{name:path}")
async def get_model(name: str, state: Server) -> dict[str, Any]:
    state.check_model(name)
    return model_card(state)
