"""create_app(config): the one place where the gateway is wired together.

Resources (database, upstream HTTP session) are opened and closed in ``cleanup_ctx``; shared state hangs off typed
``web.AppKey``s.  ``serve`` runs the app until SIGTERM/SIGINT, letting in-flight requests finish, then closes the
database.  Nothing here does I/O at import time.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import resource
import signal
import socket
from collections.abc import AsyncIterator, Sequence

import aiohttp
import structlog
from aiohttp import web

from gateway.core.access import Gatekeeper, Limiter
from gateway.core.cache_markers import CacheMarkers
from gateway.core.chat import ChatService
from gateway.core.context import ContextPlanner
from gateway.core.conversations import ConversationsService
from gateway.core.idempotency import Replies
from gateway.core.keys import KeyRing
from gateway.core.ledger import Pricing
from gateway.core.lifecycle import Drain, InFlight
from gateway.core.metering import Meter
from gateway.core.ordering import KeyedLocks
from gateway.core.passthrough import PassThrough
from gateway.core.ports import Storage, TurnStore
from gateway.core.responses import ResponsesService
from gateway.core.retention import purge_periodically
from gateway.core.summaries import Summarizer
from gateway.core.tokens import TokenCounter
from gateway.http.connections import (
    Connections,
    GatewayRunner,
    accept_backlog,
    connection_limit,
    quiet_accept_errors,
    raise_open_file_limit,
)
from gateway.http.console import is_loopback
from gateway.http.cors import CorsPolicy
from gateway.http.heap import HeapTrimmer
from gateway.http.middleware import CanonicalLine, add_response_headers, request_context
from gateway.http.native import NATIVE_PATH, native_generation
from gateway.http.routes import add_routes
from gateway.http.state import (
    CHAT,
    CONFIG,
    CONVERSATIONS,
    CORS,
    DRAIN,
    GATEKEEPER,
    HEAP,
    IN_FLIGHT,
    LIMITER,
    MAX_HEADER_BYTES,
    METRICS,
    PASS_THROUGH,
    RESPONSES,
    STORE,
)
from gateway.observability.metrics import Metrics
from gateway.settings.config import Config, ConfigError
from gateway.settings.database import describe
from gateway.storage.open import open_storage
from gateway.upstream.client import UpstreamClient, UpstreamSettings
from gateway.upstream.retries import RetryPolicy

log = structlog.get_logger("gateway")


def create_app(config: Config) -> web.Application:
    app = web.Application(client_max_size=config.max_body_bytes, middlewares=[request_context])
    app[CONFIG] = config
    app[MAX_HEADER_BYTES] = config.max_header_bytes
    app[METRICS] = Metrics()
    app[DRAIN] = Drain()
    app[CORS] = CorsPolicy(config.cors_origins)
    app[HEAP] = HeapTrimmer()
    app[IN_FLIGHT] = InFlight(config.max_in_flight)  # chat and pass-through share the bound
    app.cleanup_ctx.append(_resources)
    app.on_response_prepare.append(add_response_headers)
    app.router.add_post(NATIVE_PATH, native_generation)
    add_routes(app)
    return app


async def _resources(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    locks = KeyedLocks()  # one per-conversation ordering for chat turns and conversation edits alike
    # Every turn holds its conversation's lock until it is recorded: what is held is what is in flight.
    storage = await open_storage(config, turns_in_flight=lambda: len(locks))
    locks.shared = storage.locks
    log.info("database_opened", path=describe(config))
    gatekeeper = Gatekeeper(config, KeyRing(storage.keys))
    try:
        await _check_start_up(config, gatekeeper, storage)
    except BaseException:
        await storage.close()
        raise
    app[GATEKEEPER], app[LIMITER] = gatekeeper, Limiter(config, shared=storage.limits)
    metrics = app[METRICS]
    storage.observe_writes(metrics.db_writes.observe)
    metrics.count_conversations(storage.count_conversations)
    settings = _upstream_settings(config)
    # No cookie jar: one session serves every tenant, and a cookie one upstream answer set must not ride along
    # with another tenant's requests.
    session = aiohttp.ClientSession(connector=UpstreamClient.connector(settings), cookie_jar=aiohttp.DummyCookieJar())
    app[STORE] = storage
    upstream = UpstreamClient(session, settings, metrics)
    pricing = Pricing(config.models)
    app[CHAT] = _chat_service(config, storage.turns, upstream, locks, app, pricing)
    app[PASS_THROUGH] = PassThrough(upstream, metrics)
    app[CONVERSATIONS] = ConversationsService(
        storage.catalog,
        locks,
        pricing=pricing,
        max_messages=config.max_messages,
        max_history_bytes=config.max_history_bytes,
    )
    app[RESPONSES] = ResponsesService(storage.turns, storage.catalog, locks)
    purger = None
    if config.idle_days > 0:
        purger = asyncio.create_task(
            purge_periodically(app[CONVERSATIONS], config.idle_days, config.purge_interval, storage.exclusive)
        )
    try:
        yield
    finally:
        if purger is not None:
            purger.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await purger
        await session.close()
        await storage.close()
        log.info("database_closed", path=describe(config))


def _upstream_settings(config: Config) -> UpstreamSettings:
    return UpstreamSettings(
        base_url=config.upstream_base_url,
        api_key=config.upstream_api_key,
        connect_timeout=config.connect_timeout,
        first_byte_timeout=config.first_byte_timeout,
        idle_timeout=config.idle_timeout,
        pool_size=config.pool_size,
        retry=RetryPolicy(config.max_attempts, config.backoff_seconds, config.retry_after_cap, config.retry_budget),
        protocol=config.upstream_protocol,
        native_base_url=config.native_base_url,
        pool_timeout=config.pool_timeout,
    )


def _chat_service(
    config: Config,
    store: TurnStore,
    upstream: UpstreamClient,
    locks: KeyedLocks,
    app: web.Application,
    pricing: Pricing,
) -> ChatService:
    counter = TokenCounter()
    summarizer = (
        Summarizer(upstream, counter, model=config.summary_model, prompt=config.summary_prompt)
        if config.summarize
        else None
    )
    return ChatService(
        store,
        upstream,
        locks,
        ContextPlanner(config, counter, summarizer),
        metrics=app[METRICS],
        drain=app[DRAIN],
        max_history_bytes=config.max_history_bytes,
        replies=Replies(store, config.idempotency_seconds),
        markers=CacheMarkers(config.models, counter),
        meter=Meter(app[METRICS], pricing),
    )


async def _check_start_up(config: Config, gatekeeper: Gatekeeper, storage: Storage) -> None:
    """Refuse to serve (``ConfigError``: one line, exit status 2) in a set-up where every turn would fail or
    that would be unsafe; storage faults that may pass (a full disk) only make ``/readyz`` fail."""
    fault = await storage.readiness(write=True)
    if fault is not None and fault.reason == "read_only":
        raise ConfigError(
            f"storage.path: the database {describe(config)!r} is read-only ({fault.detail}): no turn could be "
            "recorded; make it writable or point storage.path elsewhere."
        )
    if fault is not None:
        log.warning("database_not_ready", reason=fault.reason)
    keys_mode = await gatekeeper.keys_mode()
    log.info("auth_mode", mode=config.auth_mode, keys_required=keys_mode)
    if keys_mode and not config.upstream_api_key and not config.upstream_key_header:
        # A gateway key never goes upstream, so the upstream would get no key at all and answer 401, which the
        # client would take for its own valid gateway key being wrong.
        raise ConfigError(
            'upstream.api_key: keys mode (auth.mode = "keys", or "auto" once a gateway key exists) needs the '
            "gateway's own upstream key (upstream.api_key, or DASHSCOPE_API_KEY), or auth.upstream_key_header "
            "naming the request header in which each client sends its own; without either, requests would reach "
            "the upstream with no key."
        )
    _refuse_unsafe_open_mode(config, keys_mode)


def _refuse_unsafe_open_mode(config: Config, keys_mode: bool) -> None:
    if keys_mode or not config.upstream_api_key or config.allow_open or is_loopback(config.host):
        return
    raise ConfigError(
        f"auth.allow_open: refusing to serve in open mode on {config.host} while holding an upstream key: anyone "
        "who reaches this address could spend it. Create a gateway key (gateway keys create --tenant NAME), set "
        'auth.mode = "keys", listen on a loopback address, or set auth.allow_open = true to accept this.'
    )


async def start(config: Config, sockets: Sequence[socket.socket] = ()) -> tuple[GatewayRunner, int]:
    """Start serving; return the runner and the bound port (useful when the configured port is 0).

    ``sockets``: already-bound listening sockets to serve on (a worker's, inherited from the pre-fork parent of
    ``gateway.cli.workers``) instead of binding ``server.host``/``server.port`` here.
    """
    open_files = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    connections = Connections(connection_limit(config, open_files), config.header_timeout)
    runner = GatewayRunner(
        create_app(config),
        connections=connections,  # the cap on client connections and the header deadline (gateway.http.connections)
        handler_cancellation=True,  # a client that hangs up cancels its handler, which aborts the upstream call
        access_log_class=CanonicalLine,  # the canonical request line, written once the response is sent
        access_log=logging.getLogger("gateway.access"),  # unused by CanonicalLine; aiohttp needs a logger here
        shutdown_timeout=config.drain_seconds,
        keepalive_timeout=config.keepalive_timeout,  # aiohttp's own default keeps an idle connection for an hour
        # Room above limits.max_header_bytes, so that the access middleware answers an oversized header with a
        # JSON 431 instead of aiohttp's parser with a plain-text 400.
        max_line_size=4 * config.max_header_bytes,
        max_field_size=4 * config.max_header_bytes,
    )
    await runner.setup()
    backlog = accept_backlog(connections.limit)
    sites: list[web.BaseSite] = [web.SockSite(runner, sock, backlog=backlog) for sock in sockets]
    try:
        for site in sites or [web.TCPSite(runner, config.host, config.port, backlog=backlog)]:
            await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    port = int(runner.addresses[0][1])
    return runner, port


async def serve(config: Config, sockets: Sequence[socket.socket] = (), stop: asyncio.Event | None = None) -> None:
    """Serve until SIGTERM/SIGINT (or until ``stop`` is set: a worker whose parent is gone), then drain.
    ``sockets`` as for ``start``."""
    before, soft, hard = raise_open_file_limit()
    loop = asyncio.get_running_loop()
    quiet_accept_errors(loop)
    runner, port = await start(config, sockets)
    # From the moment requests may arrive, a stop drains them (before it, the default action ends the process:
    # nothing is in flight, and a start-up that hangs on its database can still be stopped).
    if stop is None:
        stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("open_files_limit", soft_before=before, soft=soft, hard=hard, max_connections=runner.connections.limit)
    # Everything allocated so far lives as long as the process: keep full collections from walking it again and
    # again (they otherwise pause a busy server for tens of milliseconds).
    gc.freeze()
    log.info("server_started", host=config.host, port=port, upstream=config.upstream_base_url)
    await stop.wait()
    drain = runner.app[DRAIN]
    drain.start()  # /readyz now fails, so a load balancer stops sending new requests
    log.info("server_stopping", grace_seconds=config.drain_grace, drain_seconds=config.drain_seconds)
    await asyncio.sleep(config.drain_grace)
    # aiohttp stops accepting, waits drain_seconds for in-flight handlers, then cancels them; just before that,
    # mark the drain expired so that streams still open end with an error event.
    loop.call_later(config.drain_seconds - min(0.25, config.drain_seconds / 4), drain.expire)
    await runner.cleanup()
    log.info("server_stopped")
