"""API-key check: ``Authorization: Bearer <key>`` compared in constant time; the key is never logged."""

from __future__ import annotations

import hmac

from fastapi import Request

from chatforge.serve.errors import APIError


def check_api_key(request: Request, expected: str | None) -> None:
    if not expected:
        return
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise APIError(
            401,
            "missing API key: send it as 'Authorization: Bearer <key>'",
            code="invalid_api_key",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if not hmac.compare_digest(token.strip().encode(), expected.encode()):
        raise APIError(
            401, "incorrect API key", code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"}
        )


class APIKeyMiddleware:
    """Pure ASGI middleware (streams and disconnects pass through untouched) that guards
    every path except the public ones: /health and the web UI's page and static files."""

    def __init__(
        self, app: object, api_key: str | None, public: frozenset[str], public_prefixes: tuple[str, ...]
    ) -> None:
        self.app = app
        self.api_key = api_key
        self.public = public
        self.public_prefixes = public_prefixes

    def _is_public(self, path: str) -> bool:
        return path in self.public or path.startswith(self.public_prefixes)

    async def __call__(self, scope: dict, receive: object, send: object) -> None:
        if scope["type"] == "http" and self.api_key and scope.get("method") != "OPTIONS":
            if not self._is_public(scope.get("path", "")):
                request = Request(scope)
                try:
                    check_api_key(request, self.api_key)
                except APIError as err:
                    await err.response()(scope, receive, send)
                    return
        await self.app(scope, receive, send)  # type: ignore[operator]
