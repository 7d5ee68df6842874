"""What every route of one app shares: the model, the settings, the generation worker, the
metrics, and the model ids it answers to. `create_app` makes one `ServerState`; routes get
it through the `server` dependency."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request

from chatforge.chat import ChatModel
from chatforge.serve.agent_sessions import AgentOptions, AgentSessions
from chatforge.serve.conversations import ConversationStore
from chatforge.serve.embeddings import Embedder
from chatforge.serve.errors import APIError
from chatforge.serve.metrics import Metrics
from chatforge.serve.runner import Runner
from chatforge.serve.settings import ServeSettings
from chatforge.serve.worker import GenerationWorker


@dataclass
class UIState:
    """The web UI's Tool and Code Interpreter modes (their options, the agents of the
    browser conversations, the worker pool their turns run on) and its saved conversations."""

    options: AgentOptions
    sessions: AgentSessions
    turns: GenerationWorker
    conversations: ConversationStore

    def close(self) -> None:
        self.turns.close()
        self.sessions.close()  # the agents and their code kernels
        self.conversations.close()


@dataclass
class ServerState:
    model: ChatModel
    settings: ServeSettings
    worker: GenerationWorker
    metrics: Metrics
    runner: Runner
    embedder: Embedder = field(default_factory=Embedder)
    ui: UIState | None = None
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def model_id(self) -> str:
        """The id /v1/models reports."""
        return self.settings.model_id or self.model.name

    @property
    def accepted(self) -> set[str]:
        """Model names a request may give: the served id, ``default`` and the model's own name."""
        return {self.model_id, "default", self.model.name}

    def check_model(self, name: str) -> None:
        if name not in self.accepted:
            raise APIError(
                404,
                f"the model {name!r} does not exist; this server serves {self.model_id!r} (or use 'default')",
                param="model",
                code="model_not_found",
            )


def server_state(request: Request) -> ServerState:
    return request.app.state.server


#: A route parameter annotated with this receives the app's `ServerState`.
Server = Annotated[ServerState, Depends(server_state)]
