"""The edge of every request: request id and log context, the canonical log line, errors → OpenAI JSON.

Exactly one ``request`` log event per request, carrying whatever the handler and use case bound to the
structlog context (conversation, owner, model, tokens, upstream latency, streamed or not).  Errors are translated
here and nowhere else.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web

from gateway.errors import GatewayError, error_body

log = structlog.get_logger("gateway")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

REQUEST_ID = web.RequestKey("request_id", str)
_QUIET_PATHS = frozenset({"/healthz", "/readyz"})
_HTTP_ERROR_TYPES = {404: "not_found_error", 405: "invalid_request_error", 413: "invalid_request_error"}


def error_response(status: int, body: bytes, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=body, content_type="application/json", headers=headers)


@web.middleware
async def request_context(request: web.Request, handler: Handler) -> web.StreamResponse:
    structlog.contextvars.clear_contextvars()
    request_id = request[REQUEST_ID] = uuid.uuid4().hex
    structlog.contextvars.bind_contextvars(request_id=request_id, method=request.method, path=request.path)
    started = time.perf_counter()
    status = 500
    try:
        response = await _translate_errors(request, handler)
        status = response.status
        return response
    except asyncio.CancelledError:
        status = 499  # client closed the connection before a response was complete
        raise
    finally:
        level = log.debug if request.path in _QUIET_PATHS else log.info
        level("request", status=status, duration_ms=round((time.perf_counter() - started) * 1000, 1))


async def add_request_id(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: every response, streamed or not, names the request id of its log line."""
    if REQUEST_ID in request:
        response.headers["X-Gateway-Request-Id"] = request[REQUEST_ID]


async def _translate_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except GatewayError as exc:
        structlog.contextvars.bind_contextvars(error_type=exc.type, error_code=exc.code)
        headers = getattr(exc, "headers", None)
        return error_response(exc.http_status, exc.body(), headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        type_ = _HTTP_ERROR_TYPES.get(exc.status, "invalid_request_error" if exc.status < 500 else "server_error")
        structlog.contextvars.bind_contextvars(error_type=type_)
        return error_response(exc.status, error_body(exc.reason, type_, None))
    except (asyncio.CancelledError, KeyboardInterrupt, SystemExit):
        raise
    except Exception:
        log.exception("unhandled_error")
        return error_response(
            500, error_body("The gateway failed to handle the request.", "server_error", "internal_error")
        )
