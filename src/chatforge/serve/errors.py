"""Errors in OpenAI's shape ``{"error": {"message", "type", "param", "code"}}`` with the right status.

Every failure a client can cause is a 4xx with a message that names the field; anything
unexpected becomes a logged 500 in the same shape, never a bare stack trace.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from chatforge.engines.base import PromptTooLongError
from chatforge.messages import MessageError
from chatforge.templates.base import TemplateError

log = logging.getLogger(__name__)

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    501: "not_implemented_error",
    503: "service_unavailable_error",
    504: "timeout_error",
}


class APIError(Exception):
    """An error to send to the client as-is."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        type: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type or _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
        self.headers = headers

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def from_exception(err: BaseException) -> APIError:
    """The API error for an exception raised while handling a request."""
    if isinstance(err, APIError):
        return err
    if isinstance(err, PromptTooLongError):
        return APIError(400, str(err), param="messages", code="context_length_exceeded")
    if isinstance(err, MessageError):
        return APIError(400, str(err), param=_param_of(str(err)) or "messages", code="invalid_value")
    if isinstance(err, TemplateError | ValueError):
        # Sampling parameters and templates raise ValueError naming the field.
        return APIError(400, str(err), code="invalid_value")
    log.error("unexpected error while handling a request", exc_info=err)
    return APIError(
        500, f"internal server error ({type(err).__name__}); see the server log", type="server_error"
    )


def _param_of(message: str) -> str | None:
    head = message.split(":", 1)[0]
    return head if head and " " not in head else None


def validation_message(err: RequestValidationError) -> tuple[str, str | None]:
    """A readable message naming the first invalid field (``messages[0].role: Field required``)."""
    errors = err.errors()
    if not errors:
        return "invalid request body", None
    first = errors[0]
    loc = [p for p in first.get("loc", ()) if p != "body"]
    if first.get("type") == "json_invalid":
        return f"the request body is not valid JSON: {first.get('msg', '')}", None
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    msg = first.get("msg", "invalid value")
    text = f"{path}: {msg}" if path else f"request body: {msg}"
    if len(errors) > 1:
        text += f" (and {len(errors) - 1} more error{'s' if len(errors) > 2 else ''})"
    return text, path or None


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(request: Request, err: APIError) -> JSONResponse:
        return err.response()

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, err: RequestValidationError) -> JSONResponse:
        message, param = validation_message(err)
        return APIError(400, message, param=param, code="invalid_value").response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, err: StarletteHTTPException) -> JSONResponse:
        message = err.detail if isinstance(err.detail, str) else str(err.detail)
        if err.status_code == 400 and message == "There was an error parsing the body":
            # FastAPI's words for a body json cannot decode: bad UTF-8 or nested too deeply.
            message = "the request body could not be parsed: it must be UTF-8 JSON nested at most a few hundred levels"
        if err.status_code == 404 and message == "Not Found":
            message = f"no route {request.method} {request.url.path}"
        return APIError(err.status_code, message, headers=getattr(err, "headers", None)).response()

    async def _known(request: Request, err: Exception) -> JSONResponse:
        return from_exception(err).response()

    # Registered by class so that they are handled (not re-raised and logged as crashes).
    for cls in (PromptTooLongError, MessageError, TemplateError, ValueError):
        app.add_exception_handler(cls, _known)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, err: Exception) -> JSONResponse:
        return from_exception(err).response()


class BodyLimitMiddleware:
    """Refuses request bodies over ``max_bytes`` with a 413 in OpenAI's shape.

    A declared ``Content-Length`` that is too large is refused before anything is read;
    a chunked body is counted as it arrives and refused once it passes the limit, so a
    client cannot make the server buffer (and then parse) an arbitrarily large body.
    """

    def __init__(self, app: Any, max_bytes: int | None) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _too_large(self) -> APIError:
        return APIError(
            413,
            f"the request body is larger than the server's limit of {self.max_bytes} bytes",
            code="request_too_large",
        )

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or self.max_bytes is None:
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._too_large().response()(scope, receive, send)
            return
        received = 0

        async def limited() -> dict:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # An HTTPException passes FastAPI's body parsing untouched and reaches
                    # the handler in install_error_handlers, which answers in OpenAI's shape.
                    raise StarletteHTTPException(413, self._too_large().message)
            return message

        await self.app(scope, limited, send)
