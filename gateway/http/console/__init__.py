"""The web console at ``/ui/``: a page and its assets, shipped in the package beside this module (``static/``),
that browse, search, export, fork, rewind and delete conversations through the public API and nothing else.

The page holds no secret of the server's: it signs in with a key the user types (kept in the tab's memory and
``sessionStorage``) and sends it as ``Authorization`` on every API call, so the routes here need no key and pass
the access middleware as ``/healthz`` does.  Every response carries a strict Content-Security-Policy (scripts and
styles only from these files, nothing inline, no framing), and the assets are the files of ``static/`` read once
into memory: a name that is not one of them is a 404, whatever it holds.

``server.console = false`` leaves the routes out.  In open auth mode, where any credential is an owner, the console
is served only on a loopback address: on a public one it would be a page inviting anyone to browse with whatever
credential they guess.  The check is per request, because ``auth.mode = "auto"`` turns to keys mode once a key
exists.
"""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass
from pathlib import Path

import structlog
from aiohttp import web

from gateway.http.state import CONFIG, GATEKEEPER

STATIC = Path(__file__).with_name("static")
PATH = "/ui/"
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
_CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
log = structlog.get_logger("gateway")


@dataclass(frozen=True)
class Asset:
    """One file of ``static/`` as it is served."""

    body: bytes
    content_type: str
    etag: str


CONSOLE_ASSETS = web.AppKey("console_assets", dict[str, Asset])


def is_loopback(host: str) -> bool:
    """Whether ``server.host`` is a loopback address (a host name other than localhost may resolve to anything)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_assets(directory: Path = STATIC) -> dict[str, Asset]:
    """Every file of ``directory`` of a type the console serves, by name."""
    assets = {}
    for path in sorted(directory.iterdir()):
        content_type = _CONTENT_TYPES.get(path.suffix)
        if content_type is not None and path.is_file():
            body = path.read_bytes()
            assets[path.name] = Asset(body, content_type, '"' + hashlib.sha256(body).hexdigest()[:32] + '"')
    return assets


def add_console_routes(app: web.Application) -> None:
    """The console's routes, unless ``server.console`` is false (then ``/ui/`` is a 404 like any unknown path)."""
    if not app[CONFIG].console:
        return
    app[CONSOLE_ASSETS] = read_assets()
    app.router.add_get("/ui", _redirect)
    app.router.add_get(PATH, _index)
    app.router.add_get(PATH + "{asset}", _asset)
    app.on_startup.append(_announce)  # after cleanup_ctx (first of on_startup), which sets the gatekeeper


async def _announce(app: web.Application) -> None:
    config = app[CONFIG]
    if await _served(app):
        log.info("console_enabled", path=PATH)
        return
    log.warning(
        "console_disabled",
        reason="open auth mode on a non-loopback address: /ui/ answers 404 until a gateway key exists (auth.mode "
        '"auto") or the server listens on a loopback address',
        host=config.host,
        auth_mode=config.auth_mode,
    )


async def _served(app: web.Application) -> bool:
    return is_loopback(app[CONFIG].host) or await app[GATEKEEPER].keys_mode()


async def _redirect(request: web.Request) -> web.StreamResponse:
    if not await _served(request.app):
        return _not_found()
    # Relative, so that the page works behind a proxy that mounts the gateway under a prefix.
    return web.Response(status=308, headers={**SECURITY_HEADERS, "Location": "ui/"})


async def _index(request: web.Request) -> web.StreamResponse:
    return await _serve(request, "index.html")


async def _asset(request: web.Request) -> web.StreamResponse:
    return await _serve(request, request.match_info["asset"])


async def _serve(request: web.Request, name: str) -> web.StreamResponse:
    asset = request.app[CONSOLE_ASSETS].get(name)
    if asset is None or not await _served(request.app):
        return _not_found()
    # no-cache: the browser asks again each time (a 304 while unchanged), so an upgraded gateway never runs a
    # page against assets of the old one.
    headers = {**SECURITY_HEADERS, "ETag": asset.etag, "Cache-Control": "no-cache"}
    if asset.etag in request.headers.get("If-None-Match", ""):
        return web.Response(status=304, headers=headers)
    return web.Response(body=asset.body, headers={**headers, "Content-Type": asset.content_type})


def _not_found() -> web.Response:
    return web.Response(status=404, text="Not found.", headers=SECURITY_HEADERS)
