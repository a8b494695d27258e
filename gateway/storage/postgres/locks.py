"""PostgresConversationLocks: per-conversation ordering across processes and replicas with PostgreSQL session
advisory locks (``core.ports.ConversationLocks``); also ``Storage.exclusive`` and this process's liveness, which
the shared limits (``limits``) count slots by.

How, and why:

- A conversation's lock is ``pg_try_advisory_lock(id)``, the id a stable 64-bit hash (BLAKE2b) of (owner,
  external id) -- never Python's ``hash()``, which differs from process to process.  Session locks rather than
  transaction ones: a turn holds its lock across the upstream call (seconds, minutes), and no transaction should
  stay open that long.  A holder that dies (kill -9) frees its locks: PostgreSQL drops them with its connections.
- They live on a few dedicated lock connections (``connections``), picked by id, so one id always goes to the same
  session.  PostgreSQL lets a session re-enter its own lock, and this process counts its holders per id, so two
  conversations whose ids collide both run (the second re-enters) instead of one waiting on itself forever.
  asyncpg runs one statement at a time per connection: a few keep one slow round trip from delaying every lock.
- Waiting: a try that fails waits for a notification on the channel ``gateway_unlock`` (one listening connection
  per process), which a releaser sends in the same round trip as its unlock, or for ``POLL_SECONDS``, and tries
  again.  The notification makes the hand-over a couple of round trips; the poll covers what sends none (a holder
  that died) and notifications lost while the listener reconnected.
- The listening connection also holds the process's liveness lock (``coordination_schema.PROCESS_NAMESPACE``).
- A lost lock connection (PostgreSQL restarted, the network cut) is replaced at its next use.  The locks it held
  went with it and their holders finish unprotected by them: ``Turn.expected_version`` (the fence) keeps a turn
  planned on a history that changed meanwhile from being recorded.  The listener reconnects in the background.
- A lock or unlock statement always runs to its end, even when its caller is cancelled (a client gone): a lock
  that a cancelled try took is given back at once rather than held for the rest of the process's life.

``backend`` creates one per storage: ``PostgresConversationLocks(database.connect_dedicated)``, ``await
start()`` after the migrations (it needs ``gateway_claim_process``), ``await close()`` before the pool closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from types import TracebackType
from typing import Any

import asyncpg
import structlog

from gateway.errors import StorageUnavailable
from gateway.storage.postgres.coordination_schema import EXCLUSIVE_NAMESPACE
from gateway.storage.postgres.database import DRIVER_ERRORS

log = structlog.get_logger("gateway")

NOTIFY_CHANNEL = "gateway_unlock"
POLL_SECONDS = 0.25  # the fallback when no notification comes
STATEMENT_TIMEOUT_SECONDS = 10.0  # a lock statement that takes longer: the server counts as unreachable
HEARTBEAT_SECONDS = 5.0  # how often an idle listener proves its connection (a silent network cut sends no FIN)
RECONNECT_SECONDS = 0.5  # between attempts to get the listener back
RETRY_CONNECT_SECONDS = 0.25  # after a failed connect, locks fail at once for this long instead of each waiting
UNREACHABLE = "The conversation store cannot be reached."

# Errors after which the connection is beyond use (rather than a statement refused on a live one).
_CONNECTION_LOST: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.OperatorInterventionError,  # the server shutting down or restarting
    # A statement sent while the driver still digests the FATAL message of a terminated session
    # ("another operation is in progress"): seen when the server cuts an idle connection.
    asyncpg.InternalClientError,
    OSError,
    TimeoutError,
)
_ERRORS = (*DRIVER_ERRORS, *_CONNECTION_LOST)
# A key is (id,) for a conversation (the bigint form) or (namespace, id) for a named lock (the two-int form).
_LOCK = {1: "SELECT pg_try_advisory_lock($1)", 2: "SELECT pg_try_advisory_lock($1, $2)"}
# The notification is queued at the statement's commit, after the unlock: a woken waiter finds the lock free.  It
# costs no fsync: a transaction that wrote nothing but a notification commits asynchronously (measured with
# pg_stat_wal), whatever synchronous_commit says.
_UNLOCK = {
    1: f"SELECT pg_advisory_unlock($1), pg_notify('{NOTIFY_CHANNEL}', $1::text)",
    2: "SELECT pg_advisory_unlock($1, $2)",
}
_CLAIM_PROCESS = "SELECT gateway_claim_process($1)"

Connect = Callable[[], Awaitable[asyncpg.Connection]]
Key = tuple[int, ...]
Held = dict[Key, int]  # a session's locks held by this process: key -> holders


def conversation_lock_id(key: tuple[str, str]) -> int:
    """The advisory lock id of (owner, external id): the same in every process, of every version of Python."""
    owner, external_id = key
    # Length-prefixed, so that ("ab", "c") and ("a", "bc") differ; surrogatepass: ids from JSON may hold lone
    # surrogates, which plain UTF-8 refuses.
    data = f"{len(owner)}:{owner}{external_id}".encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big", signed=True)


def _name_id(name: str) -> int:
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=4).digest(), "big", signed=True)


class PostgresConversationLocks:
    """The cross-process conversation locks, ``exclusive`` and the process's number (see the module docstring)."""

    def __init__(self, connect: Connect, *, connections: int = 2) -> None:
        self._connect = connect
        self._sessions = tuple(_Session(connect) for _ in range(max(1, connections)))
        self._waiting: dict[int, tuple[asyncio.Event, int]] = {}  # lock id -> (woken on its unlock, waiters)
        self._named: set[str] = set()  # names this process holds (or is taking) under ``exclusive``
        self._process: int | None = None
        self._listener: asyncio.Task[None] | None = None
        self._background: set[asyncio.Future[Any]] = set()  # unlocks left running by cancelled callers

    @property
    def process(self) -> int:
        """This process's number: the shared limits record its slots under it (alive while its lock is held)."""
        if self._process is None:
            raise RuntimeError("PostgresConversationLocks.start() has not run")
        return self._process

    async def start(self) -> None:
        """Connect the listener (claiming a process number) and every lock connection; ``StorageUnavailable`` when
        the server cannot be reached."""
        conn = await self._listen()
        try:
            for session in self._sessions:
                await session.open()
        except BaseException:
            conn.terminate()
            raise
        self._listener = asyncio.get_running_loop().create_task(self._keep_listening(conn))

    async def close(self) -> None:
        """Stop listening and close the connections, which frees whatever is still held."""
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None
        if self._background:
            await asyncio.wait(self._background, timeout=STATEMENT_TIMEOUT_SECONDS)
        for session in self._sessions:
            await session.close()

    def hold(self, key: tuple[str, str]) -> _Hold:
        """``async with locks.hold(key):`` -- see ``core.ports.ConversationLocks``."""
        lock_id = conversation_lock_id(key)
        return _Hold(self, self._sessions[lock_id % len(self._sessions)], lock_id)

    def rank(self, key: tuple[str, str]) -> int:
        return conversation_lock_id(key)

    @contextlib.asynccontextmanager
    async def exclusive(self, name: str) -> AsyncIterator[bool]:
        """True for one process at a time (``Storage.exclusive``), without waiting: ``pg_try_advisory_lock``."""
        # Marked before the first await: this process's own session would re-enter the lock and say True twice.
        if name in self._named:
            yield False
            return
        self._named.add(name)
        try:
            key = (EXCLUSIVE_NAMESPACE, _name_id(name))
            session = self._sessions[key[1] % len(self._sessions)]
            held = await self._lock(session, key)
            if held is None:
                yield False
                return
            try:
                yield True
            finally:
                await self._unlock(session, key, held)
        finally:
            self._named.discard(name)

    # --- taking and giving back ------------------------------------------------------------------------------

    async def _acquire(self, session: _Session, lock_id: int) -> Held:
        key = (lock_id,)
        held = await self._lock(session, key)
        if held is not None:
            return held
        # Registered before the next try, so that an unlock between the try and the wait still wakes this one.
        event, waiters = self._waiting.get(lock_id, (asyncio.Event(), 0))
        self._waiting[lock_id] = (event, waiters + 1)
        try:
            while True:
                event.clear()
                held = await self._lock(session, key)
                if held is not None:
                    return held
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(POLL_SECONDS):
                        await event.wait()
        finally:
            event, waiters = self._waiting[lock_id]
            if waiters == 1:
                del self._waiting[lock_id]
            else:
                self._waiting[lock_id] = (event, waiters - 1)

    async def _lock(self, session: _Session, key: Key) -> Held | None:
        # Shielded: a try cancelled while its statement runs might hold the lock without knowing it.
        attempt = asyncio.ensure_future(session.lock(key))
        try:
            return await asyncio.shield(attempt)
        except asyncio.CancelledError:
            attempt.add_done_callback(partial(self._give_back, session, key))
            raise

    def _give_back(self, session: _Session, key: Key, attempt: asyncio.Future[Held | None]) -> None:
        if attempt.cancelled() or attempt.exception() is not None:
            return
        held = attempt.result()
        if held is not None:
            self._keep(asyncio.ensure_future(session.unlock(key, held)))

    async def _unlock(self, session: _Session, key: Key, held: Held) -> None:
        # Shielded and kept: the unlock must happen even when the holder is cancelled on its way out.
        unlock = self._keep(asyncio.ensure_future(session.unlock(key, held)))
        await asyncio.shield(unlock)

    def _keep(self, future: asyncio.Future[Any]) -> asyncio.Future[Any]:
        self._background.add(future)
        future.add_done_callback(self._background.discard)
        return future

    # --- the listener ----------------------------------------------------------------------------------------

    async def _listen(self) -> asyncpg.Connection:
        """A listening connection holding this process's liveness lock (the same number again after a reconnect)."""
        conn = await _connect(self._connect)
        try:
            self._process = await conn.fetchval(_CLAIM_PROCESS, self._process, timeout=STATEMENT_TIMEOUT_SECONDS)
            await conn.add_listener(NOTIFY_CHANNEL, self._notified)
        except _ERRORS as exc:
            conn.terminate()
            raise StorageUnavailable(UNREACHABLE, code="storage_unavailable") from exc
        # Unlocks notified while nobody listened are lost: every waiter tries again now rather than at its poll.
        for event, _ in self._waiting.values():
            event.set()
        return conn

    def _notified(self, connection: Any, pid: int, channel: str, payload: object) -> None:
        try:
            lock_id = int(str(payload))
        except ValueError:
            return
        waiting = self._waiting.get(lock_id)
        if waiting is not None:
            waiting[0].set()

    async def _keep_listening(self, conn: asyncpg.Connection) -> None:
        """Watch the listener's connection; when it is lost, connect again (until closed)."""
        try:
            while True:
                await _watch(conn)
                conn.terminate()
                log.warning("coordination_listener_lost", process=self._process)
                # At once, then every RECONNECT_SECONDS: while no listener holds the liveness lock, another
                # process at a limit would take this one's slots for a dead process's and drop them.
                while True:
                    try:
                        conn = await self._listen()
                    except StorageUnavailable:
                        await asyncio.sleep(RECONNECT_SECONDS)
                        continue
                    log.info("coordination_listener_restored", process=self._process)
                    break
        finally:
            conn.terminate()


class _Hold:
    # A plain class rather than @asynccontextmanager: every turn enters one (as core.ordering's _Hold).
    __slots__ = ("_held", "_id", "_locks", "_session")

    def __init__(self, locks: PostgresConversationLocks, session: _Session, lock_id: int) -> None:
        self._locks = locks
        self._session = session
        self._id = lock_id
        self._held: Held | None = None

    async def __aenter__(self) -> None:
        self._held = await self._locks._acquire(self._session, self._id)

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        held, self._held = self._held, None
        if held is not None:
            await self._locks._unlock(self._session, (self._id,), held)


class _Session:
    """One lock connection and the locks this process holds on it, counted per key.  ``held`` is replaced when the
    connection is: a holder whose dict is no longer current lost its lock with the old session."""

    def __init__(self, connect: Connect) -> None:
        self._connect = connect
        self._conn: asyncpg.Connection | None = None
        self._busy = asyncio.Lock()  # one statement at a time: asyncpg refuses overlapping ones on a connection
        self._failed_at = float("-inf")
        self._closed = False
        self.held: Held = {}

    async def open(self) -> None:
        async with self._busy:
            await self._connection()

    async def close(self) -> None:
        async with self._busy:
            self._closed = True
            if self._conn is not None:
                with contextlib.suppress(*_ERRORS):
                    await self._conn.close(timeout=STATEMENT_TIMEOUT_SECONDS)
            self._drop()

    async def lock(self, key: Key) -> Held | None:
        """Take ``key`` when it is free or already this process's: the ``held`` it is counted in (to give to
        ``unlock``), or None when another process holds it."""
        async with self._busy:
            for attempt in (1, 2):
                conn = await self._connection()  # first: a lost connection's holds are no longer to re-enter
                if key in self.held:
                    self.held[key] += 1
                    return self.held
                try:
                    taken = await conn.fetchval(_LOCK[len(key)], *key, timeout=STATEMENT_TIMEOUT_SECONDS)
                except _CONNECTION_LOST as exc:
                    # Maybe taken, maybe not: only closing the session makes sure nothing stays held.
                    self._drop()
                    # Once more on a new connection: an idle one may have died with a restart nobody noticed.
                    if attempt == 2 or isinstance(exc, TimeoutError):
                        raise StorageUnavailable(UNREACHABLE, code="storage_unavailable") from exc
                    continue
                except _ERRORS as exc:
                    raise StorageUnavailable(UNREACHABLE, code="storage_unavailable") from exc
                if not taken:
                    return None
                self.held[key] = 1
                return self.held
        raise AssertionError("unreachable")  # pragma: no cover

    async def unlock(self, key: Key, held: Held) -> None:
        """Give back one hold of ``key``; the last one unlocks it (and, for a conversation, wakes the waiters of
        every process).  Never raises: a lock that cannot be given back goes with its session."""
        async with self._busy:
            if held is not self.held:
                return  # its session is gone, and the lock with it
            left = held[key] - 1
            if left:
                held[key] = left
                return
            del held[key]
            conn = self._conn
            if conn is None or conn.is_closed():
                self._drop()  # the session is gone already, and its locks with it
                return
            try:
                await conn.fetchval(_UNLOCK[len(key)], *key, timeout=STATEMENT_TIMEOUT_SECONDS)
            except Exception as exc:  # whatever went wrong, the lock must not outlive its holder
                log.warning("conversation_unlock_failed", error=type(exc).__name__)
                self._drop()

    async def _connection(self) -> asyncpg.Connection:
        if self._conn is not None and not self._conn.is_closed():
            return self._conn
        self._drop()
        if self._closed or time.monotonic() - self._failed_at < RETRY_CONNECT_SECONDS:
            raise StorageUnavailable(UNREACHABLE, code="storage_unavailable")
        try:
            self._conn = await _connect(self._connect)
        except StorageUnavailable:
            self._failed_at = time.monotonic()
            raise
        return self._conn

    def _drop(self) -> None:
        """Forget the connection, closing it (which frees every lock of its session)."""
        if self._conn is not None:
            self._conn.terminate()
        self._conn = None
        self.held = {}


async def _watch(conn: asyncpg.Connection) -> None:
    """Return once ``conn`` is lost: closed under it, or silent to a heartbeat."""
    lost = asyncio.Event()
    conn.add_termination_listener(lambda _: lost.set())
    while True:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(HEARTBEAT_SECONDS):
                await lost.wait()
        if lost.is_set():
            return
        try:
            await conn.fetchval("SELECT 1", timeout=STATEMENT_TIMEOUT_SECONDS)
        except _ERRORS:
            return


async def _connect(connect: Connect) -> asyncpg.Connection:
    try:
        return await connect()
    except _ERRORS as exc:  # a plain asyncpg.connect; Database.connect_dedicated raises StorageUnavailable
        raise StorageUnavailable(UNREACHABLE, code="storage_unavailable") from exc
