"""Running a tool function under a wall-clock limit, from sync or async callers.

Sync callers wait on a daemon thread (`run_in_daemon_thread`, `run_coroutine_in_thread`);
async callers await the tool under `asyncio.timeout` (`await_with_timeout`), with sync
functions moved off the event loop (`run_sync_in_thread`). When *our* deadline passes,
`ToolTimeout` is raised; a tool's own exceptions, ``TimeoutError`` included, pass through.
Python cannot stop a thread: a timed-out call keeps running in the background until it
returns on its own.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

__all__ = [
    "ToolTimeout",
    "await_with_timeout",
    "run_coroutine_in_thread",
    "run_in_daemon_thread",
    "run_sync_in_thread",
]


class ToolTimeout(Exception):
    """The tool's timeout passed before it returned."""


def run_in_daemon_thread(func: Callable[[], Any], timeout: float | None, thread_name: str) -> Any:
    """Run ``func`` in a daemon thread and wait at most ``timeout`` seconds.

    A daemon thread (not a pool worker) so that a tool that never returns cannot keep the
    process from exiting. Python cannot stop a thread: a timed-out call keeps running in
    the background until it returns on its own.
    """
    outcome: dict[str, Any] = {}
    done = threading.Event()
    context = contextvars.copy_context()

    def target() -> None:
        try:
            outcome["value"] = context.run(func)
        except BaseException as exc:  # noqa: BLE001 - handed back to the caller
            outcome["error"] = exc
        finally:
            done.set()

    threading.Thread(target=target, name=thread_name, daemon=True).start()
    if not done.wait(timeout):
        raise ToolTimeout
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


async def await_with_timeout(awaitable: Awaitable[Any], timeout: float | None) -> Any:
    """Await under ``timeout``; our deadline raises `ToolTimeout`, a tool's own TimeoutError passes through."""
    scope = asyncio.timeout(timeout)
    try:
        async with scope:
            return await awaitable
    except TimeoutError:
        if scope.expired():
            raise ToolTimeout from None
        raise


def run_coroutine_in_thread(
    coroutine_fn: Callable[[], Coroutine[Any, Any, Any]], timeout: float | None, thread_name: str
) -> Any:
    """Run an async tool from sync code: ``coroutine_fn()`` awaited under ``timeout``.

    A fresh event loop in a worker thread: works whether or not the caller's thread runs a loop.
    """

    async def run() -> Any:
        return await await_with_timeout(coroutine_fn(), timeout)

    guard = None if timeout is None else timeout + 1.0
    return run_in_daemon_thread(lambda: asyncio.run(run()), guard, thread_name)


def run_sync_in_thread(func: Callable[[], Any], thread_name: str) -> Awaitable[Any]:
    """A future, on the running loop, for ``func()`` run in a daemon thread (with the caller's context)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()
    context = contextvars.copy_context()

    def deliver(setter: Callable[[Any], None], value: Any) -> None:
        if not future.done():
            setter(value)

    def target() -> None:
        try:
            value = context.run(func)
            callback, payload = future.set_result, value
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting coroutine
            callback, payload = future.set_exception, exc
        try:
            loop.call_soon_threadsafe(deliver, callback, payload)
        except RuntimeError:
            pass  # the loop closed after a timeout; nobody is waiting any more

    threading.Thread(target=target, name=thread_name, daemon=True).start()
    return future
