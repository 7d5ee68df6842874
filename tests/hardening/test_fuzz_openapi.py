"""Property-based fuzzing of the API from the server's own ``/openapi.json`` (schemathesis
4 strategies, valid and invalid bodies) against a real server process: no 5xx, and every
error body in OpenAI's shape. Bounded by default; ``CHATFORGE_FUZZ_EXAMPLES=500`` runs longer."""

from __future__ import annotations

import os

import httpx
import pytest
from serve_support import KEY

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from schemathesis.generation import GenerationMode  # noqa: E402

EXAMPLES = int(os.environ.get("CHATFORGE_FUZZ_EXAMPLES", "60"))
AUTH = {"Authorization": f"Bearer {KEY}"}


def test_fuzz_api_from_its_openapi_schema(hardened_server):
    url = hardened_server.url
    spec = httpx.get(f"{url}/openapi.json", headers=AUTH, timeout=10).json()
    schema = schemathesis.openapi.from_dict(spec)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/chat/completions", "/v1/completions", "/v1/embeddings"}
    strategy = st.one_of(
        [op.as_strategy(mode) for op in operations for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)]
    )
    failures: list[str] = []

    @settings(max_examples=EXAMPLES, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(case=strategy)
    def check(case) -> None:
        kwargs = case.as_transport_kwargs(base_url=url, headers=AUTH)
        request = {k: kwargs[k] for k in ("method", "url", "headers", "params", "cookies") if k in kwargs}
        if "json" in kwargs:
            request["json"] = kwargs["json"]
        elif "data" in kwargs:
            request["content"] = kwargs["data"]
        try:
            r = httpx.request(**request, timeout=60)
        except httpx.InvalidURL:  # a generated path parameter httpx itself refuses to send
            return
        where = f"{case.method} {case.path}: {str(kwargs.get('json', kwargs.get('data')))[:300]}"
        # 503 (queue full) and 504 (request timeout) are the server shedding load on a busy
        # machine, not bugs; they must still be in OpenAI's shape (checked below).
        if r.status_code >= 500 and r.status_code not in (503, 504):
            failures.append(f"{r.status_code} for {where}: {r.text[:300]}")
        if r.status_code >= 400:
            try:
                error = r.json()["error"]
                ok = set(error) == {"message", "type", "param", "code"} and bool(error["message"])
            except (ValueError, KeyError, TypeError):
                ok = False
            if not ok:
                failures.append(f"{r.status_code} not in OpenAI's shape for {where}: {r.text[:300]}")

    check()
    assert not failures, "\n".join(failures[:10])
    assert httpx.get(f"{url}/health", timeout=5).status_code == 200
