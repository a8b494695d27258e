"""The floor: a do-nothing aiohttp pass-through proxy, the least any aiohttp proxy can cost.

It forwards the body and the Authorization header to the upstream over one pooled ``ClientSession`` and hands
back status, body and content type, nothing more.  Run as ``python -m bench.floor UPSTREAM_BASE_URL [--processes
N]``; it prints ``port N`` once listening.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from bench.serving import processes_flag, run_until_signalled

SESSION = web.AppKey("session", aiohttp.ClientSession)
UPSTREAM = web.AppKey("upstream", str)


async def chat_completions(request: web.Request) -> web.Response:
    headers = {"Content-Type": "application/json"}
    if "Authorization" in request.headers:
        headers["Authorization"] = request.headers["Authorization"]
    url = request.app[UPSTREAM] + "/chat/completions"
    async with request.app[SESSION].post(url, data=await request.read(), headers=headers) as upstream:
        body = await upstream.read()
        return web.Response(status=upstream.status, body=body, content_type=upstream.content_type)


async def ready(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def _session(app: web.Application) -> AsyncIterator[None]:
    app[SESSION] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100))
    yield
    await app[SESSION].close()


def make_app(upstream_base_url: str) -> web.Application:
    app = web.Application()
    app[UPSTREAM] = upstream_base_url.rstrip("/")
    app.cleanup_ctx.append(_session)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_get("/readyz", ready)  # the balancer's health check, as the gateway's
    return app


if __name__ == "__main__":
    run_until_signalled(make_app(sys.argv[1]), processes_flag(sys.argv))
