"""The edge of every request: request id and log context, the canonical log line, errors → OpenAI JSON, and
access control (header sizes, the caller's principal, per-key limits) before any handler runs.

Exactly one ``request`` log event per request, carrying whatever the handler and use case noted for it with
``observability.logs.note`` (conversation, owner, model, tokens, upstream latency, streamed or not).  aiohttp writes it
through ``CanonicalLine``, its access-log hook, which runs once the response is on the wire, so the line costs
the client no latency; a request whose client hung up never gets that far and is logged here instead.  Errors
are translated here and nowhere else.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from gateway.errors import GatewayError, HeadersTooLarge, PermissionDenied, error_body
from gateway.http.cors import CorsPolicy
from gateway.http.state import (
    CORS,
    GATEKEEPER,
    HEAP,
    LIMITER,
    MAX_HEADER_BYTES,
    METRICS,
    PRINCIPAL,
    REQUEST_ID,
    REQUEST_STARTED,
)
from gateway.observability.logs import note, open_request_fields, request_fields
from gateway.protocols.dashscope import native_error
from gateway.protocols.openai_chat import dumps

log = structlog.get_logger("gateway")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# OpenAI-compatible, and DashScope's native protocol: only these need a principal.  Every other path passes
# without one: /healthz and the other operations routes, and the console's page and assets (/ui/), which sign in
# by sending a key on the API calls they make.
_API_PREFIXES = ("/v1/", "/api/v1/")
NATIVE_PREFIX = "/api/v1/"
_QUIET_PATHS = frozenset({"/healthz", "/readyz"})
_HTTP_ERROR_TYPES = {404: "not_found_error", 405: "invalid_request_error", 413: "invalid_request_error"}


def error_response(status: int, body: bytes, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=body, content_type="application/json", headers=headers)


class CanonicalLine(AbstractAccessLogger):
    """The canonical ``request`` line, written by aiohttp after the response was sent (same task and context)."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        _canonical_line(request, response.status, time)
        if isinstance(request, web.Request):
            request.app[HEAP].after(request.content_length)


@web.middleware
async def request_context(request: web.Request, handler: Handler) -> web.StreamResponse:
    request_id = request[REQUEST_ID] = os.urandom(16).hex()
    structlog.contextvars.bind_contextvars(request_id=request_id)
    open_request_fields(method=request.method, path=request.path)
    started = request[REQUEST_STARTED] = time.perf_counter()
    in_flight = request.app[METRICS].in_flight
    in_flight.inc()
    try:
        return await _translate_errors(request, handler)
    except asyncio.CancelledError:
        # 499: the client closed the connection before the response was complete.  One whose body never even
        # arrived (a slow-body attack, shed at the connection cap) is logged at debug level: an attacker that
        # reconnects as fast as it is shed must not be able to fill the log (it is counted in metrics all the
        # same, and summarised by client_connections_shed).
        body_missing = not request.content.is_eof()
        _canonical_line(request, 499, time.perf_counter() - started, quiet=body_missing)
        raise
    finally:
        in_flight.dec()


async def _access_control(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Header sizes for every request; for the API, who the caller is and whether their limits let them in.
    Run inside ``request_context`` (one middleware layer rather than two: each costs every request)."""
    limit = request.app[MAX_HEADER_BYTES]
    for name, value in request.raw_headers:
        if len(name) + len(value) > limit:
            raise HeadersTooLarge(
                f"A request header is larger than {limit} bytes.", code="request_header_fields_too_large"
            )
    cors = request.app[CORS]
    if cors.enabled and request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
        return _preflight(cors, request)
    if not request.path.startswith(_API_PREFIXES):
        return await handler(request)
    principal = request[PRINCIPAL] = await request.app[GATEKEEPER].identify(request.headers)
    if principal.key_id is None:
        note(owner=principal.owner[:12] or None)
    else:
        note(tenant=principal.tenant, key_id=principal.key_id)
    release = await request.app[LIMITER].admit(principal)
    try:
        return await handler(request)
    finally:
        await release()


def _preflight(cors: CorsPolicy, request: web.Request) -> web.Response:
    origin = request.headers.get("Origin")
    if origin is None or cors.allow_origin(origin) is None:
        raise PermissionDenied("This origin may not call the gateway (server.cors_origins).", code="origin_not_allowed")
    return web.Response(
        status=204, headers=cors.preflight(origin, request.headers.get("Access-Control-Request-Headers"))
    )


def _canonical_line(request: web.BaseRequest, status: int, seconds: float, *, quiet: bool = False) -> None:
    level = log.debug if quiet or request.path in _QUIET_PATHS else log.info
    level("request", **request_fields(), status=status, duration_ms=round(seconds * 1000, 1))
    if isinstance(request, web.Request):  # always, in fact: aiohttp's access-log hook is typed more loosely
        request.app[METRICS].request_done(_route(request), status, seconds)


def _route(request: web.Request) -> str:
    """The route's pattern, never the path itself (it may hold a conversation id)."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


async def add_response_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: every response, streamed or not, names the request id of its log line (and its
    headers leaving are the request's time to first byte), and carries CORS headers for an allowed origin."""
    cors = request.app[CORS]
    if cors.enabled and "Access-Control-Allow-Origin" not in response.headers:  # not a preflight's own answer
        for name, value in cors.response_headers(request.headers.get("Origin")).items():
            vary = response.headers.get("Vary") if name == "Vary" else None
            response.headers[name] = f"{vary}, {value}" if vary else value
    if REQUEST_ID in request:
        response.headers["X-Gateway-Request-Id"] = request[REQUEST_ID]
        elapsed = time.perf_counter() - request[REQUEST_STARTED]
        request.app[METRICS].first_byte_after(_route(request), elapsed)


async def _translate_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await _access_control(request, handler)
    except GatewayError as exc:
        note(error_type=exc.type, error_code=exc.code)
        headers = getattr(exc, "headers", None)
        return _error(request, exc.http_status, exc.body(), headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        type_ = _HTTP_ERROR_TYPES.get(exc.status, "invalid_request_error" if exc.status < 500 else "server_error")
        note(error_type=type_)
        return _error(request, exc.status, error_body(exc.reason, type_, None))
    except (asyncio.CancelledError, KeyboardInterrupt, SystemExit):
        raise
    except Exception:
        log.exception("unhandled_error")
        if request.writer.output_size > 0:
            raise  # a response is on the wire already: aiohttp closes the connection rather than send a second
        return _error(
            request, 500, error_body("The gateway failed to handle the request.", "server_error", "internal_error")
        )


def _error(request: web.Request, status: int, body: bytes, headers: dict[str, str] | None = None) -> web.Response:
    """An error in the caller's protocol: OpenAI's shape, or DashScope's native one on its endpoint."""
    if request.path.startswith(NATIVE_PREFIX):
        body = dumps(native_error(body, request.get(REQUEST_ID, ""))).encode()
    return error_response(status, body, headers)
