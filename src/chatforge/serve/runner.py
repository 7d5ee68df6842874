"""Running a worker job for an HTTP request: submission (503 when the queue is full), the
request timeout (504), cancellation when the client goes away, and peeking at the first
item so that an early failure is an HTTP error rather than an event inside a stream."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import Request

from chatforge.serve.errors import APIError
from chatforge.serve.metrics import Metrics
from chatforge.serve.worker import GenerationWorker, Job, QueueFullError

log = logging.getLogger(__name__)


def submit(worker: GenerationWorker, run: Callable[..., Any]) -> Job:
    """``worker.submit(run)``, or a 503 with ``Retry-After`` when its queue is full."""
    try:
        return worker.submit(run)
    except QueueFullError as err:
        raise APIError(503, str(err), code="queue_full", headers={"Retry-After": "1"}) from None


class Runner:
    """Submits jobs, enforces the request timeout, and cancels work whose client has gone."""

    def __init__(self, worker: GenerationWorker, metrics: Metrics, timeout: float) -> None:
        self.worker = worker
        self.metrics = metrics
        self.timeout = timeout

    def submit(self, run: Any) -> Job:
        return submit(self.worker, run)

    async def items(self, job: Job, deadline: float) -> AsyncIterator[Any]:
        """The job's items until it ends; a 504 once the deadline passes (the job is cancelled)."""
        events = job.events(deadline)
        try:
            while True:
                try:
                    item = await anext(events)
                except StopAsyncIteration:
                    return
                except TimeoutError:
                    job.cancel.set()
                    raise APIError(
                        504,
                        f"the request took longer than {self.timeout:g} s and was cancelled",
                        code="timeout",
                    ) from None
                yield item
        finally:
            await events.aclose()

    def deadline(self) -> float:
        return time.monotonic() + self.timeout

    async def peeked(self, job: Job) -> AsyncIterator[Any]:
        """The job's items, after waiting for the first one here: a failure before any token
        (a prompt too long, a bad parameter) then raises now, as an HTTP error, not inside a stream."""
        items = self.items(job, self.deadline())
        try:
            first = await anext(items)
        except StopAsyncIteration:
            first = None

        async def chained() -> AsyncIterator[Any]:
            try:
                if first is not None:
                    yield first
                    async for item in items:
                        yield item
            finally:
                await items.aclose()

        return chained()


async def watch_disconnect(request: Request, job: Job) -> None:
    """Cancel ``job`` when the client of a request goes away."""
    while not job.cancel.is_set():
        if await request.is_disconnected():
            log.info("client disconnected; cancelling its generation")
            job.cancel.set()
            return
        await asyncio.sleep(0.25)
