"""The FastAPI app: the OpenAI-compatible API, health, metrics and the web UI.

``create_app(model, settings)`` makes the app's `ServerState` and wires the routers
(``routes/``) and the middleware; the work of each route lives in its router. Generation
always runs on the worker's threads, never on the event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from chatforge.chat import ChatModel
from chatforge.serve.agent_sessions import AgentOptions, AgentSessions
from chatforge.serve.auth import APIKeyMiddleware
from chatforge.serve.conversations import ConversationStore, default_path
from chatforge.serve.errors import BodyLimitMiddleware, install_error_handlers
from chatforge.serve.metrics import Metrics, MetricsMiddleware
from chatforge.serve.routes import chat, completions, conversations, embeddings, health, models, ui
from chatforge.serve.runner import Runner
from chatforge.serve.settings import ServeSettings
from chatforge.serve.state import ServerState, UIState
from chatforge.serve.worker import GenerationWorker

PUBLIC_PATHS = frozenset({"/health", "/", "/ui/config", "/favicon.ico"})
PUBLIC_PREFIXES = ("/ui/static/",)


def create_app(
    model: ChatModel, settings: ServeSettings | None = None, *, agent_options: AgentOptions | None = None
) -> FastAPI:
    """The app; ``agent_options`` configure the web UI's Tool and Code Interpreter modes."""
    settings = settings or ServeSettings()
    state = server_state(model, settings)
    if settings.ui:
        options = agent_options or AgentOptions()
        state.ui = UIState(
            options,
            AgentSessions(model, options),
            GenerationWorker(max_queue=options.max_sessions, threads=options.agent_workers),
            ConversationStore(settings.conversations_db or default_path()),  # opened on first use
        )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # The grammar engine's view of the tokenizer takes about a second to build: now,
        # rather than in the first request with tools.
        await asyncio.to_thread(model.prepare_constraints)
        yield
        state.worker.close()
        if state.ui is not None:
            state.ui.close()

    app = FastAPI(title="chatforge", version="0.1.0", docs_url="/docs", redoc_url=None, lifespan=lifespan)
    app.state.server = state
    install_error_handlers(app)
    for router in (health.router, models.router, chat.router, completions.router, embeddings.router):
        app.include_router(router)
    if settings.ui:
        app.mount("/ui/static", ui.static_files, name="ui-static")
        app.include_router(ui.router)
        app.include_router(conversations.router)

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
    app.add_middleware(MetricsMiddleware, metrics=state.metrics)
    return app


def server_state(model: ChatModel, settings: ServeSettings) -> ServerState:
    """The model with its generation worker (as many threads as the engine batches
    requests), metrics and request runner."""
    workers = settings.workers or getattr(model.engine, "max_batch", 1)
    if settings.batch_wait_ms is not None and hasattr(model.engine, "batch_wait"):
        model.engine.batch_wait = settings.batch_wait_ms / 1000
    metrics = Metrics(lambda: worker.depth, lambda: worker.busy)  # read once the worker exists
    worker = GenerationWorker(settings.max_queue, workers, on_cancelled=metrics.cancelled.inc)
    return ServerState(model, settings, worker, metrics, Runner(worker, metrics, settings.request_timeout))
