"""Load with faults against a real server process: concurrent streaming clients for a
bounded time, a third of them hanging up mid-stream and a third stalling on reads.
Afterwards nothing is still generating for a departed client, the queue is drained,
every finished stream is whole, and the server's memory has not grown.

Bounded for the suite (``CHATFORGE_LOAD_SECONDS``, default 12 s, 12 clients); the figures
it prints (completed requests, p95 latency, peak RSS) are the ones in docs/reliability.md.
"""

from __future__ import annotations

import json
import os
import statistics
import threading
import time
from pathlib import Path

import httpx

SECONDS = float(os.environ.get("CHATFORGE_LOAD_SECONDS", "12"))
CLIENTS = int(os.environ.get("CHATFORGE_LOAD_CLIENTS", "12"))
BODY = {
    "model": "default",
    "messages": [{"role": "user", "content": "Hello, how are you?"}],
    "stream": True,
    "max_tokens": 24,
}


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def client(url: str, key: str, behaviour: str, deadline: float, results: dict) -> None:
    """Requests in a loop until ``deadline`` (at least one)."""
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(timeout=60) as http:
        first = True
        while first or time.monotonic() < deadline:
            first = False
            started = time.monotonic()
            with http.stream("POST", f"{url}/v1/chat/completions", json=BODY, headers=headers) as r:
                if r.status_code != 200:
                    results["rejected"].append(r.status_code)
                    time.sleep(0.2)
                    continue
                events = []
                for line in r.iter_lines():
                    if not line.startswith("data: "):
                        continue
                    events.append(line[6:])
                    if behaviour == "disconnect" and len(events) == 2:
                        break  # hang up mid-stream
                    if behaviour == "stall" and len(events) == 1:
                        time.sleep(2.0)  # stop reading for a while
                if behaviour == "disconnect":
                    results["disconnected"] += 1
                    continue
                whole = (
                    events
                    and events[-1] == "[DONE]"
                    and all(json.loads(e).get("choices") is not None for e in events[:-1])
                )
                results["whole" if whole else "broken"] += 1
                if behaviour == "normal":
                    results["latency"].append(time.monotonic() - started)


def alone(url: str, key: str) -> float:
    """Seconds for one whole stream with nothing else running (median of 3)."""
    results = {"whole": 0, "broken": 0, "disconnected": 0, "rejected": [], "latency": []}
    for _ in range(3):
        client(url, key, "normal", 0.0, results)
    return statistics.median(results["latency"])


def test_streaming_clients_that_hang_up_or_stall(hardened_server):
    url, key, pid = hardened_server.url, "test-key-7d1f", hardened_server.process.pid
    results = {"whole": 0, "broken": 0, "disconnected": 0, "rejected": [], "latency": []}
    baseline = alone(url, key)
    rss_before = rss_kib(pid)
    peak = [rss_before]
    deadline = time.monotonic() + SECONDS
    behaviours = ["normal", "disconnect", "stall"]
    threads = [
        threading.Thread(target=client, args=(url, key, behaviours[i % 3], deadline, results), daemon=True)
        for i in range(CLIENTS)
    ]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        peak.append(rss_kib(pid))
        time.sleep(0.25)
    # Departed clients leave nothing running: the worker is idle and the queue empty.
    for _ in range(40):
        health = httpx.get(f"{url}/health", timeout=5).json()
        if health["busy"] == 0 and health["queue_depth"] == 0:
            break
        time.sleep(0.25)
    assert health["busy"] == 0 and health["queue_depth"] == 0, health
    assert results["broken"] == 0 and results["whole"] > 0 and results["disconnected"] > 0, results
    assert all(code in (429, 503) for code in results["rejected"]), results["rejected"]
    # No memory growth worth the name after the load (the tiny model needs little).
    assert rss_kib(pid) - rss_before < 64 * 1024
    after = alone(url, key)  # latency back to baseline: printed, not asserted (no timing asserts)
    lat = sorted(results["latency"])
    p95 = lat[min(len(lat) - 1, int(0.95 * len(lat)))] if lat else float("nan")
    print(
        f"\nload with faults: {SECONDS:.0f} s, {CLIENTS} clients: {results['whole']} whole streams, "
        f"{results['disconnected']} hung up, {len(results['rejected'])} rejected; "
        f"normal-client latency median {statistics.median(lat) if lat else float('nan'):.3f} s, p95 {p95:.3f} s; "
        f"one stream alone {baseline:.3f} s before, {after:.3f} s after; server RSS {rss_before / 1024:.0f} MiB before, peak {max(peak) / 1024:.0f} MiB, after {rss_kib(pid) / 1024:.0f} MiB"
    )
