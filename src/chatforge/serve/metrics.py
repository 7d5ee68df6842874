"""Prometheus metrics: requests by route and status, tokens, latency, queue depth, cancellations.

Each app gets its own registry, so several apps (tests) never share counters.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE_LATEST", "Metrics", "MetricsMiddleware"]


class Metrics:
    def __init__(self, queue_depth: Callable[[], int], busy: Callable[[], int]) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "chatforge_requests", "HTTP requests by route and status", ["route", "status"], registry=r
        )
        self.latency = Histogram(
            "chatforge_request_latency_seconds",
            "Time from request to the last byte of the response",
            ["route"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
            registry=r,
        )
        self.prompt_tokens = Counter("chatforge_prompt_tokens", "Prompt tokens processed", registry=r)
        self.completion_tokens = Counter("chatforge_completion_tokens", "Tokens generated", registry=r)
        self.cancelled = Counter(
            "chatforge_generations_cancelled",
            "Generations stopped early (client gone or timeout)",
            registry=r,
        )
        self.generations = Counter(
            "chatforge_generations", "Generations run, by finish reason", ["finish_reason"], registry=r
        )
        depth = Gauge("chatforge_queue_depth", "Requests waiting for the engine", registry=r)
        depth.set_function(lambda: float(queue_depth()))
        active = Gauge("chatforge_generations_active", "Generations running now", registry=r)
        active.set_function(lambda: float(busy()))

    def record_usage(self, prompt: int, completion: int, finish_reason: str | None) -> None:
        self.prompt_tokens.inc(prompt)
        self.completion_tokens.inc(completion)
        self.generations.labels(finish_reason or "unknown").inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Pure ASGI middleware: counts each response and times it to its last byte (streams too)."""

    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = {"code": 500}

        async def send_wrapper(message: dict) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or "other"
            self.metrics.requests.labels(path, str(status["code"])).inc()
            self.metrics.latency.labels(path).observe(time.perf_counter() - started)
