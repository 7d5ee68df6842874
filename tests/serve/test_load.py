"""16 concurrent streaming clients, a quarter of them hanging up early: the rest complete
whole, the abandoned generations are cancelled (counted in /metrics), the server stays healthy."""

from __future__ import annotations

import json
import re
import threading

import httpx
from serve_support import KEY

AUTH = {"Authorization": f"Bearer {KEY}"}


def cancelled_count(server) -> float:
    match = re.search(r"^chatforge_generations_cancelled_total (\S+)$", server.metrics(), re.M)
    return float(match.group(1)) if match else 0.0


def test_concurrent_streams_with_disconnects(chat_server):
    before = cancelled_count(chat_server)
    results: dict[int, str] = {}
    errors: list[BaseException] = []

    def client(i: int) -> None:
        quitter = i % 4 == 0
        body = {"messages": [{"role": "user", "content": f"Tell me a story {i}"}], "stream": True,
                "temperature": 0, "max_tokens": 200 if quitter else 12}
        try:
            with httpx.Client(timeout=60) as http, http.stream(
                "POST", f"{chat_server.base_url}/chat/completions", json=body, headers=AUTH
            ) as r:
                assert r.status_code == 200
                lines = []
                for line in r.iter_lines():
                    lines.append(line)
                    if quitter and len(lines) >= 6:
                        return  # hang up mid-stream
                results[i] = "\n".join(lines)
        except BaseException as err:  # noqa: BLE001
            errors.append(err)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert len(results) == 12
    for text in results.values():
        data = [ln[len("data: "):] for ln in text.splitlines() if ln.startswith("data: ")]
        assert data[-1] == "[DONE]"
        finish = [json.loads(d)["choices"][0]["finish_reason"] for d in data[:-1]]
        assert finish[-1] in ("length", "stop")
    # Each hung-up client's generation (200 tokens asked) was cancelled, not run to the end.
    deadline = __import__("time").monotonic() + 20
    while cancelled_count(chat_server) - before < 4 and __import__("time").monotonic() < deadline:
        __import__("time").sleep(0.2)
    assert cancelled_count(chat_server) - before >= 4
    assert httpx.get(f"{chat_server.url}/health").json()["busy"] == 0
    ok = httpx.post(f"{chat_server.base_url}/chat/completions", headers=AUTH,
                    json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
    assert ok.status_code == 200
