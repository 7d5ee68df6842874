"""``/v1/embeddings``: sentence embeddings (all-MiniLM-L6-v2, :mod:`chatforge.serve.embeddings`)."""

from __future__ import annotations

import asyncio
import base64
import struct
from typing import Any

from fastapi import APIRouter

from chatforge.serve.embeddings import MODEL_ID, EmbeddingsUnavailable
from chatforge.serve.errors import APIError
from chatforge.serve.protocol import EmbeddingRequest
from chatforge.serve.state import Server

router = APIRouter()


@router.post("/v1/embeddings")
async def embeddings(req: EmbeddingRequest, state: Server) -> Any:
    if req.model not in state.accepted | {MODEL_ID, f"sentence-transformers/{MODEL_ID}"}:
        state.check_model(req.model)
    texts = [req.input] if isinstance(req.input, str) else list(req.input)
    if not all(isinstance(t, str) and t for t in texts):
        raise APIError(400, "input: non-empty strings are required", param="input", code="invalid_value")
    try:
        vectors, tokens = await asyncio.to_thread(state.embedder.embed, texts)
    except EmbeddingsUnavailable as err:
        raise APIError(503, str(err), code="embeddings_unavailable") from None
    data = []
    for i, vec in enumerate(vectors):
        if req.dimensions is not None:
            vec = vec[: req.dimensions]
        value: Any = vec
        if req.encoding_format == "base64":
            value = base64.b64encode(struct.pack(f"<{len(vec)}f", *vec)).decode()
        data.append({"object": "embedding", "index": i, "embedding": value})
    return {
        "object": "list",
        "data": data,
        "model": MODEL_ID,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
