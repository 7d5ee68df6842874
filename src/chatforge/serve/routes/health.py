"""``/health`` (public: load balancers and probes call it) and ``/metrics`` (Prometheus)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response

from chatforge.serve.metrics import CONTENT_TYPE_LATEST
from chatforge.serve.state import Server

router = APIRouter()


@router.get("/health")
async def health(state: Server) -> dict[str, Any]:
    worker = state.worker
    return {"status": "ok", "model": state.model_id, "queue_depth": worker.depth, "busy": worker.busy}


@router.get("/metrics")
async def prometheus(state: Server) -> Response:
    return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)
