"""Operations routes: liveness, readiness (can a turn be recorded now?), Prometheus metrics, the OpenAPI document."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from gateway import __version__
from gateway.core.ports import StorageFault
from gateway.http.openapi import document
from gateway.http.state import DRAIN, METRICS, STORE
from gateway.protocols.openai_chat import dumps


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """200 when a turn could be recorded now; 503 while draining, or naming the storage fault in the way."""
    if request.app[DRAIN].started:
        return web.json_response({"status": "draining"}, status=503)
    try:
        fault = await request.app[STORE].readiness()
    except Exception as exc:
        structlog.get_logger("gateway").warning("database_unreachable", error=type(exc).__name__)
        fault = StorageFault("unreachable", "the database could not be checked")
    if fault is not None:
        structlog.get_logger("gateway").warning("database_not_ready", reason=fault.reason)
        body = {"status": "unavailable", "database": fault.reason, "detail": fault.detail}
        return web.json_response(body, status=503)
    return web.json_response({"status": "ready", "database": "ok"})


async def metrics(request: web.Request) -> web.Response:
    return web.Response(body=request.app[METRICS].exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST})


def openapi_handler() -> Callable[[web.Request], Awaitable[web.Response]]:
    body = dumps(document(__version__)).encode()

    async def openapi(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json")

    return openapi
