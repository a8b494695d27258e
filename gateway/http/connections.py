"""Client connections: how many may be open at once, how long a client may take over a request's headers, and the
process's open-file limit they are all counted against.

Left to itself aiohttp keeps an idle connection for an hour, lets a client trickle its headers for as long as it
likes, and accepts until ``accept()`` fails with EMFILE, after which nothing new gets in and asyncio logs a
traceback per attempt.  Here, installed through ``GatewayRunner`` (an ``AppRunner`` whose server is a
``GuardedServer``, whose protocol is a ``GuardedConnection``):

- **Header deadline**: a fresh connection has ``server.header_timeout_seconds`` from accept to complete its first
  request's headers; a kept-alive one may sit idle for ``server.keepalive_timeout_seconds`` (aiohttp's own
  timer), and from the first byte of its next request has the header timeout again (nginx's rule).  The deadline
  is fixed when it starts: bytes arriving do not move it.
- **Connection cap** (``Connections``): past ``limit`` open connections, a new one evicts the connection that has
  waited on its client longest (idle between requests, still sending headers, or still sending a body: see
  ``waiting_for_client``); with none to evict it is refused at once.  Connections whose request is being worked
  on are never touched.
- **Open files**: ``raise_open_file_limit`` lifts the soft RLIMIT_NOFILE to the hard one, and
  ``connection_limit`` leaves room under it for the upstream pool, one accept burst, the database and the log,
  so that ``accept()`` never meets EMFILE.

The body's own deadline (408) is ``routes.read_body``'s.  What is shed is logged as one summary line per
``_REPORT_SECONDS`` (``client_connections_shed``), never a line per connection: an attack must not become a flood
of log lines.  (A request evicted while its body was still arriving has reached a handler, so it also gets its
canonical ``request`` line, status 499, from the middleware.)
"""

from __future__ import annotations

import asyncio
import resource
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any, cast

import structlog
from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http import RawRequestMessage
from aiohttp.streams import StreamReader

from gateway.settings.config import Config, ConfigError

log = structlog.get_logger("gateway")

_RequestFactory = Callable[
    [RawRequestMessage, StreamReader, web.RequestHandler, AbstractStreamWriter, "asyncio.Task[None]"], web.BaseRequest
]

# The listen backlog, which is also how many connections asyncio accepts in one go before any of them reaches
# connection_made (where the cap is applied): that many file descriptors can be open above the cap for a moment.
BACKLOG = 128
# Descriptors the process holds besides client and upstream connections: stdio, the event loop's selector and
# self-pipe, the listening socket, SQLite's database, WAL and shm files on two connections, the log, imports.
_RESERVED_FILES = 64
_MIN_CONNECTIONS = 16
_REPORT_SECONDS = 10.0


def raise_open_file_limit() -> tuple[int, int, int]:
    """Lift the soft open-file limit to the hard one; return (soft before, soft now, hard)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if hard == resource.RLIM_INFINITY:
        # Linux refuses an infinite limit for open files (it is bounded by fs.nr_open): ask for a large one.
        target = max(soft, 1 << 20) if soft != resource.RLIM_INFINITY else soft
    if target != soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            target = soft
    return soft, target, hard


def connection_limit(config: Config, open_files: int) -> int:
    """The most client connections that fit under ``open_files`` (``server.max_connections``, or all that fit
    when it is 0) beside the upstream pool, one accept burst and the process's own files."""
    room = open_files - config.pool_size - BACKLOG - _RESERVED_FILES
    if open_files == resource.RLIM_INFINITY:
        room = 1 << 20
    limit = min(config.max_connections, room) if config.max_connections else room
    if limit < _MIN_CONNECTIONS:
        raise ConfigError(
            f"server.max_connections: the open-file limit ({open_files}) leaves room for {max(room, 0)} client "
            f"connections beside upstream.pool_size ({config.pool_size}), an accept burst ({BACKLOG}) and the "
            f"gateway's own files ({_RESERVED_FILES}); raise the limit (ulimit -n) or lower upstream.pool_size."
        )
    if config.max_connections > room:
        log.warning("max_connections_lowered", configured=config.max_connections, limit=limit, open_files=open_files)
    return limit


def accept_backlog(limit: int) -> int:
    """The listen backlog for a cap of ``limit`` connections: at most a quarter of it, so that one burst of
    reconnecting attackers (asyncio accepts up to a backlog's worth per loop iteration) cannot evict a connection
    that has not yet had the few iterations its request needs to be read."""
    return max(_MIN_CONNECTIONS, min(BACKLOG, limit // 4))


class Connections:
    """The open client connections, and among them those waiting on their client, oldest first (a dict keeps
    insertion order: a connection is re-inserted each time it starts waiting)."""

    def __init__(self, limit: int, header_timeout: float) -> None:
        self.limit = limit
        self.header_timeout = header_timeout
        self._open: set[GuardedConnection] = set()
        self._waiting: dict[GuardedConnection, None] = {}
        self._shed = {"evicted": 0, "refused": 0, "header_timeouts": 0}
        self._report: asyncio.TimerHandle | None = None

    @property
    def open(self) -> int:
        return len(self._open)

    def admit(self, connection: GuardedConnection) -> bool:
        """Count a new connection in, evicting the longest-waiting one at the cap; False: refuse it."""
        if len(self._open) >= self.limit:
            if not self._waiting:
                self._count("refused")
                return False
            victim = next(iter(self._waiting))
            self.lost(victim)  # counted out now: its descriptor is closed on the next loop iteration
            victim.force_close()
            self._count("evicted")
        self._open.add(connection)
        self._waiting[connection] = None
        return True

    def waiting(self, connection: GuardedConnection) -> None:
        """The connection waits on its client from now on (for a request, or for the rest of one)."""
        self._waiting.pop(connection, None)
        if connection in self._open:
            self._waiting[connection] = None

    def working(self, connection: GuardedConnection) -> None:
        self._waiting.pop(connection, None)

    def lost(self, connection: GuardedConnection) -> None:
        self._open.discard(connection)
        self._waiting.pop(connection, None)

    def header_timeout_hit(self) -> None:
        self._count("header_timeouts")

    def _count(self, what: str) -> None:
        self._shed[what] += 1
        if self._report is None:
            self._report = asyncio.get_running_loop().call_later(_REPORT_SECONDS, self._flush)

    def _flush(self) -> None:
        self._report = None
        log.warning(
            "client_connections_shed", **self._shed, open=len(self._open), limit=self.limit, seconds=_REPORT_SECONDS
        )
        self._shed = dict.fromkeys(self._shed, 0)


class GuardedConnection(web.RequestHandler):
    """aiohttp's HTTP protocol, counted by ``Connections`` and held to the header deadline."""

    __slots__ = ("_connections", "_deadline", "_event_loop", "_working")

    def __init__(
        self, manager: web.Server, connections: Connections, *, loop: asyncio.AbstractEventLoop, **kwargs: Any
    ) -> None:
        super().__init__(manager, loop=loop, **kwargs)
        self._connections = connections
        self._event_loop = loop
        self._deadline: asyncio.TimerHandle | None = None
        self._working = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self._connections.admit(self):
            # Refused before aiohttp sees it: no parser, no task, and the descriptor is closed at once.
            cast(asyncio.Transport, transport).abort()
            return
        super().connection_made(transport)
        self._start_deadline()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._stop_deadline()
        self._connections.lost(self)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if data and self._deadline is None and not self._working:
            self._start_deadline()  # the first byte of the next request on a kept-alive connection
        super().data_received(data)

    def request_started(self) -> None:
        """Its headers are complete: the handler runs now (called by ``GuardedServer``'s request factory)."""
        self._working = True
        self._stop_deadline()
        self._connections.working(self)

    def awaiting_body(self, waiting: bool) -> None:
        """The handler waits for the rest of the body (True), or has it (False)."""
        if waiting:
            self._connections.waiting(self)
        else:
            self._connections.working(self)

    async def finish_response(
        self, request: web.BaseRequest, resp: web.StreamResponse, start_time: float | None
    ) -> tuple[web.StreamResponse, bool]:
        try:
            return await super().finish_response(request, resp, start_time)
        finally:
            # The response is on the wire: until the next request, the connection waits on its client.
            self._working = False
            self._connections.waiting(self)

    def _start_deadline(self) -> None:
        self._stop_deadline()
        self._deadline = self._event_loop.call_later(self._connections.header_timeout, self._headers_late)

    def _stop_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _headers_late(self) -> None:
        self._deadline = None
        if not self._working:
            self._connections.header_timeout_hit()
            self.force_close()


@contextmanager
def waiting_for_client(request: web.BaseRequest) -> Iterator[None]:
    """While the body of ``request`` is still arriving, its connection may be evicted like an idle one: a client
    that has not delivered its request yet is the cheapest to turn away (and a slow body must not hold its
    ``upstream.max_in_flight`` slot against the cap)."""
    connection = request.protocol
    if not isinstance(connection, GuardedConnection):
        yield
        return
    connection.awaiting_body(True)
    try:
        yield
    finally:
        connection.awaiting_body(False)


class GuardedServer(web.Server):
    """aiohttp's low-level server with ``GuardedConnection`` as its protocol."""

    def __init__(
        self,
        handler: Callable[[web.BaseRequest], Awaitable[web.StreamResponse]],
        *,
        connections: Connections,
        request_factory: _RequestFactory,
        handler_cancellation: bool,
        loop: asyncio.AbstractEventLoop,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            handler, request_factory=request_factory, handler_cancellation=handler_cancellation, loop=loop, **kwargs
        )
        self.guard = connections
        self._event_loop = loop
        self._protocol_kwargs = kwargs
        make_request = self.request_factory

        def request_factory_(
            message: RawRequestMessage,
            payload: StreamReader,
            protocol: web.RequestHandler,
            writer: AbstractStreamWriter,
            task: asyncio.Task[None],
        ) -> web.BaseRequest:
            if isinstance(protocol, GuardedConnection):  # always: this server makes no other
                protocol.request_started()
            return make_request(message, payload, protocol, writer, task)

        self.request_factory = request_factory_

    def __call__(self) -> GuardedConnection:
        return GuardedConnection(self, self.guard, loop=self._event_loop, **self._protocol_kwargs)


class GatewayRunner(web.AppRunner):
    """``web.AppRunner`` serving through a ``GuardedServer``.  The application's start-up runs as in AppRunner;
    its plain server is replaced before any site listens."""

    __slots__ = ("_connections", "_protocol_kwargs")

    def __init__(
        self,
        app: web.Application,
        *,
        connections: Connections,
        shutdown_timeout: float,
        handler_cancellation: bool,
        **protocol_kwargs: Any,
    ) -> None:
        super().__init__(
            app, shutdown_timeout=shutdown_timeout, handler_cancellation=handler_cancellation, **protocol_kwargs
        )
        self._connections = connections
        self._protocol_kwargs = protocol_kwargs

    @property
    def connections(self) -> Connections:
        return self._connections

    async def _make_server(self) -> web.Server:
        # The hook through which every aiohttp runner makes its server; AppRunner's runs the application's
        # start-up and hands back a plain Server, whose parts (the app's handler and request factory) are reused.
        plain = await super()._make_server()
        return GuardedServer(
            plain.request_handler,
            connections=self._connections,
            request_factory=plain.request_factory,
            handler_cancellation=plain.handler_cancellation,
            loop=asyncio.get_running_loop(),
            **self._protocol_kwargs,
        )


def quiet_accept_errors(loop: asyncio.AbstractEventLoop, every: float = _REPORT_SECONDS) -> None:
    """Should ``accept()`` still run out of descriptors (another process's share, a limit lowered at run time),
    asyncio would log a traceback each time it retries: log the first failure of a run, then one line per
    ``every`` seconds counting the rest."""
    loop.set_exception_handler(_AcceptFailures(loop, every))


class _AcceptFailures:
    """The event loop's exception handler: accept failures summarised, everything else as before."""

    def __init__(self, loop: asyncio.AbstractEventLoop, every: float) -> None:
        self._default = loop.get_exception_handler()
        self._every = every
        self._count = 0
        self._timer: asyncio.TimerHandle | None = None

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if context.get("message") != "socket.accept() out of system resource":
            if self._default is not None:
                self._default(loop, context)
            else:
                loop.default_exception_handler(context)
        elif self._timer is None:  # the first of a run: say what happened, then count the rest
            log.error("accept_out_of_resources", error=str(context.get("exception")))
            self._timer = loop.call_later(self._every, self._report, loop)
        else:
            self._count += 1

    def _report(self, loop: asyncio.AbstractEventLoop) -> None:
        if not self._count:
            self._timer = None  # quiet again: the next failure is logged at once
            return
        log.error("accept_out_of_resources", failures=self._count, seconds=self._every)
        self._count = 0
        self._timer = loop.call_later(self._every, self._report, loop)
