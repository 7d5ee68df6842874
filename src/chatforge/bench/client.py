"""The concurrent-streams measurement's clients: ``n`` requests started together, timed.

``chatforge bench`` runs the streams through its HTTP server from a process of their own
(``python -m chatforge.bench.client``), as an application calling the server would be:
clients in the server's process would share its interpreter lock and count their own
parsing as the server's overhead. The module imports nothing heavy, so that the process
starts in a fraction of a second. Protocol: a JSON object on stdin (``url``, ``texts``,
``max_tokens``), the :func:`run_streams` result as JSON on stdout.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def run_streams(n: int, one: Callable[[int], tuple[int, float, float]]) -> dict[str, Any]:
    """Start ``n`` requests together (``one(i)`` returns tokens, latency and time to the
    first token); aggregate tokens/s, latency and time-to-first-token percentiles."""
    results: list[tuple[int, float, float]] = [(0, 0.0, 0.0)] * n
    errors: list[BaseException] = []
    barrier = threading.Barrier(n)

    def worker(i: int) -> None:
        barrier.wait()
        try:
            results[i] = one(i)
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    if errors:
        raise RuntimeError(f"{len(errors)} of {n} streams failed: {errors[0]}")
    tokens = sum(r[0] for r in results)
    latencies = [r[1] for r in results]
    firsts = [r[2] for r in results]
    return {
        "streams": n,
        "tokens": tokens,
        "wall_s": wall,
        "aggregate_tps": tokens / wall,
        "p50_s": percentile(latencies, 0.5),
        "p95_s": percentile(latencies, 0.95),
        "ttft_p50_s": percentile(firsts, 0.5),
        "ttft_p95_s": percentile(firsts, 0.95),
    }


def stream_chat(client: Any, url: str, text: str, max_tokens: int) -> tuple[int, float, float]:
    """One streamed greedy chat completion: the completion tokens the server reports, the
    latency, and the time to the first chunk with content."""
    body = {
        "model": "default",
        "messages": [{"role": "user", "content": text}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    started = time.perf_counter()
    tokens = 0
    first = None
    with client.stream("POST", url, json=body) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if line.startswith("data:") and line[5:].strip() != "[DONE]":
                chunk = json.loads(line[5:])
                if first is None and any(c.get("delta", {}).get("content") for c in chunk.get("choices", [])):
                    first = time.perf_counter() - started
                usage = chunk.get("usage")
                if usage:
                    tokens = usage.get("completion_tokens", tokens)
    latency = time.perf_counter() - started
    return tokens, latency, latency if first is None else first


def main() -> int:
    import httpx

    spec = json.load(sys.stdin)
    texts: list[str] = spec["texts"]
    # One client for all requests, as an application keeps its OpenAI client: a client per
    # request would build a TLS context each time (tens of ms of CPU).
    limits = httpx.Limits(max_connections=len(texts), max_keepalive_connections=len(texts))
    with httpx.Client(timeout=600, limits=limits) as client:
        result = run_streams(
            len(texts), lambda i: stream_chat(client, spec["url"], texts[i], spec["max_tokens"])
        )
    result["client_pid"] = os.getpid()
    json.dump(result, sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
