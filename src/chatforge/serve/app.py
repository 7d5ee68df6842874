"""The FastAPI app: the OpenAI-compatible API, health, metrics and the web UI.

``create_app(model, settings)`` wires the pieces; the work of each route lives in
``completions`` (chat and text), ``embeddings`` and ``ui``. Generation always runs on
the worker's threads, never on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import Response, StreamingResponse

from chatforge.chat import ChatModel
from chatforge.serve import completions as cmp
from chatforge.serve.auth import APIKeyMiddleware
from chatforge.serve.embeddings import MODEL_ID as EMBEDDING_MODEL_ID
from chatforge.serve.embeddings import Embedder, EmbeddingsUnavailable
from chatforge.serve.errors import APIError, BodyLimitMiddleware, install_error_handlers
from chatforge.serve.metrics import CONTENT_TYPE_LATEST, Metrics, MetricsMiddleware
from chatforge.serve.plan import build_plan, sampling_kwargs
from chatforge.serve.protocol import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from chatforge.serve.settings import ServeSettings
from chatforge.serve.worker import GenerationWorker

if TYPE_CHECKING:
    from chatforge.serve.ui import AgentOptions

log = logging.getLogger(__name__)

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
PUBLIC_PATHS = frozenset({"/health", "/", "/ui/config", "/favicon.ico"})
PUBLIC_PREFIXES = ("/ui/static/",)


def create_app(
    model: ChatModel, settings: ServeSettings | None = None, *, agent_options: AgentOptions | None = None
) -> FastAPI:
    """The app; ``agent_options`` configure the web UI's Tool and Code Interpreter modes."""
    settings = settings or ServeSettings()
    model_id = settings.model_id or model.name
    accepted = {model_id, "default", model.name}
    created = int(time.time())
    embedder = Embedder()

    metrics_holder: dict[str, Metrics] = {}
    # Engines batch concurrent requests themselves: feed them as many as they can take.
    # (The UI's agent turns, whose code may run for a minute, have workers of their own.)
    workers = settings.workers or getattr(model.engine, "max_batch", 1)
    if settings.batch_wait_ms is not None and hasattr(model.engine, "batch_wait"):
        model.engine.batch_wait = settings.batch_wait_ms / 1000
    worker = GenerationWorker(
        settings.max_queue, workers, on_cancelled=lambda: metrics_holder["m"].cancelled.inc()
    )
    metrics = Metrics(lambda: worker.depth, lambda: worker.busy)
    metrics_holder["m"] = metrics
    runner = cmp.Runner(worker, metrics, settings.request_timeout)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        worker.close()
        agent_worker = getattr(app.state, "agent_worker", None)
        if agent_worker is not None:
            agent_worker.close()
        agent_sessions = getattr(app.state, "agent_sessions", None)
        if agent_sessions is not None:  # the UI's agents and their code kernels
            agent_sessions.close()

    app = FastAPI(title="chatforge", version="0.1.0", docs_url="/docs", redoc_url=None, lifespan=lifespan)
    app.state.model = model
    app.state.settings = settings
    app.state.worker = worker
    app.state.metrics = metrics
    install_error_handlers(app)

    def check_model(name: str) -> None:
        if name not in accepted:
            raise APIError(
                404,
                f"the model {name!r} does not exist; this server serves {model_id!r} (or use 'default')",
                param="model",
                code="model_not_found",
            )

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": model_id, "queue_depth": worker.depth, "busy": worker.busy}

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    def model_card(name: str) -> dict[str, Any]:
        return {"id": name, "object": "model", "created": created, "owned_by": "chatforge"}

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card(model_id)]}

    @app.get("/v1/models/{name:path}")
    async def get_model(name: str) -> dict[str, Any]:
        check_model(name)
        return model_card(model_id)

    @app.post("/v1/chat/completions")
    async def chat_completions(req: ChatCompletionRequest, request: Request) -> Any:
        model.engine.expect_request()
        check_model(req.model)
        plan = build_plan(req, model.engine.context_length, settings.default_max_tokens)
        job = runner.submit(cmp.chat_job(model, plan))
        if not req.stream:
            outcomes = await cmp.collect_chat(runner, request, job)
            usage = cmp.usage_of(outcomes)
            metrics.record_usage(usage.prompt_tokens, usage.completion_tokens, _finish(outcomes))
            return cmp.chat_response(outcomes, model_id)
        items = await cmp.peeked(runner, job)
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        stream = cmp.stream_chat(
            runner, job, _counted(items, metrics), model_id, include_usage, plan.buffered
        )
        return StreamingResponse(stream, media_type="text/event-stream", headers=SSE_HEADERS)

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest, request: Request) -> Any:
        model.engine.expect_request()
        check_model(req.model)
        prompts = [req.prompt] if isinstance(req.prompt, str) else list(req.prompt)
        if not prompts:
            raise APIError(400, "prompt: must not be empty", param="prompt", code="invalid_value")
        max_tokens = req.max_tokens or settings.default_max_tokens or 16  # OpenAI's default for this route
        params = sampling_kwargs(req, max_tokens, model.engine.context_length)
        job = runner.submit(cmp.text_job(model, prompts, params, req.n))
        return await _text_completion(req, request, job, prompts)

    async def _text_completion(req: CompletionRequest, request: Request, job: Any, prompts: list[str]) -> Any:
        cid = f"cmpl-{cmp.uuid.uuid4().hex}"
        now = int(time.time())

        def body(choices: list[dict[str, Any]], usage: dict[str, Any] | None = None) -> dict[str, Any]:
            out: dict[str, Any] = {
                "id": cid,
                "object": "text_completion",
                "created": now,
                "model": model_id,
                "choices": choices,
            }
            if usage is not None:
                out["usage"] = usage
            return out

        def echo(index: int) -> str:
            return prompts[index // req.n] if req.echo else ""

        if not req.stream:
            texts: dict[int, list[str]] = {}
            finish: dict[int, str] = {}
            usage = cmp.Usage()
            watcher = asyncio.create_task(cmp.watch_disconnect(request, job))
            try:
                async for index, chunk in runner.items(job, runner.deadline()):
                    texts.setdefault(index, [echo(index)]).append(chunk.text)
                    if chunk.stats is not None:
                        finish[index] = "length" if chunk.stats.finish_reason == "length" else "stop"
                        usage.prompt_tokens += chunk.stats.prompt_tokens if index % req.n == 0 else 0
                        usage.completion_tokens += chunk.stats.completion_tokens
            finally:
                watcher.cancel()
            metrics.record_usage(usage.prompt_tokens, usage.completion_tokens, None)
            choices = [
                {"index": i, "text": "".join(t), "logprobs": None, "finish_reason": finish.get(i, "stop")}
                for i, t in sorted(texts.items())
            ]
            return body(choices, usage.to_dict())

        items = await cmp.peeked(runner, job)
        include_usage = bool(req.stream_options and req.stream_options.include_usage)

        async def stream() -> Any:
            usage = cmp.Usage()
            seen: set[int] = set()
            try:
                async for index, chunk in items:
                    text = chunk.text
                    if index not in seen:
                        seen.add(index)
                        text = echo(index) + text
                    reason = None
                    if chunk.stats is not None:
                        reason = "length" if chunk.stats.finish_reason == "length" else "stop"
                        usage.prompt_tokens += chunk.stats.prompt_tokens if index % req.n == 0 else 0
                        usage.completion_tokens += chunk.stats.completion_tokens
                    if text or reason:
                        yield cmp.sse(
                            body([{"index": index, "text": text, "logprobs": None, "finish_reason": reason}])
                        )
            except APIError as err:
                yield cmp.sse(err.body())
            finally:
                job.cancel.set()
            metrics.record_usage(usage.prompt_tokens, usage.completion_tokens, None)
            if include_usage:
                yield cmp.sse(body([], usage.to_dict()))
            yield "data: [DONE]\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream", headers=SSE_HEADERS)

    @app.post("/v1/embeddings")
    async def embeddings(req: EmbeddingRequest) -> Any:
        if req.model not in accepted | {EMBEDDING_MODEL_ID, f"sentence-transformers/{EMBEDDING_MODEL_ID}"}:
            check_model(req.model)
        texts = [req.input] if isinstance(req.input, str) else list(req.input)
        if not all(isinstance(t, str) and t for t in texts):
            raise APIError(400, "input: non-empty strings are required", param="input", code="invalid_value")
        try:
            vectors, tokens = await asyncio.to_thread(embedder.embed, texts)
        except EmbeddingsUnavailable as err:
            raise APIError(503, str(err), code="embeddings_unavailable") from None
        data = []
        for i, vec in enumerate(vectors):
            if req.dimensions is not None:
                vec = vec[: req.dimensions]
            value: Any = vec
            if req.encoding_format == "base64":
                import base64
                import struct

                value = base64.b64encode(struct.pack(f"<{len(vec)}f", *vec)).decode()
            data.append({"object": "embedding", "index": i, "embedding": value})
        return {
            "object": "list",
            "data": data,
            "model": EMBEDDING_MODEL_ID,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    if settings.ui:
        from chatforge.serve.ui import mount_ui

        mount_ui(app, model_id, agent_options)

    # Outermost first: metrics see every response, auth runs before any body is read,
    # then the body limit.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(
        APIKeyMiddleware, api_key=settings.api_key, public=PUBLIC_PATHS, public_prefixes=PUBLIC_PREFIXES
    )
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type"],
        )
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return app


def _finish(outcomes: list[cmp.Outcome]) -> str | None:
    return cmp.finish_reason(outcomes[0]) if outcomes else None


async def _counted(items: Any, metrics: Metrics) -> Any:
    """Pass a chat job's items through, recording token usage as choices finish."""
    try:
        async for index, item in items:
            if isinstance(item, cmp.Outcome):
                metrics.record_usage(
                    item.stats.prompt_tokens if index == 0 else 0,
                    item.completion_tokens,
                    item.stats.finish_reason,
                )
            yield index, item
    finally:
        await items.aclose()
