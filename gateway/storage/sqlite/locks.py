"""FileLocks: the SQLite backend's cross-process locks (``core.ports.ConversationLocks``, ``Storage.exclusive``, and
the liveness of a process for the shared limits), as byte-range locks on a side file, ``<database>-locks``, beside
the database file itself (its path resolved: a symlink or another relative path to the same database names the same
side file, as SQLite's own -wal and -shm files follow symlinks).

Every process using the database (worker processes, the CLI) opens the side file once and takes open-file-description
locks (``F_OFD_SETLK``) on single bytes of it; the file stays empty (a lock may lie past its end).  Such a lock costs a
system call of a few microseconds, belongs to the open file rather than to a thread or process id, and is freed by
the kernel when its holder dies (kill -9 included), so a crashed worker never leaves a conversation locked.  Where
OFD locks do not exist (not Linux) classic POSIX locks (``F_SETLK``) serve: this process holds one descriptor of
the file and counts its own holders, which is all that differs.

The byte of a conversation is a stable hash of (owner, external id) (CRC-32, never Python's randomised ``hash``:
every process must agree) in [0, 2**31).  Two conversations may share a byte: then they exclude each other across
processes, which costs only waiting, and within this process the byte's holders are counted so that releasing one
never unlocks a byte the other still holds.  ``exclusive(name)`` locks a byte of [2**31, 2**31 + 2**16), liveness a
byte from 2**32 on: the ranges never meet.

Locking never blocks the event loop: a busy byte is tried again after 1 ms, then after doubling pauses of at most
20 ms.  Taking a conversation's byte (not re-entering it) calls ``taken``: the store then looks at the database for
other processes' commits before it serves a cached history, even within the event-loop iteration of its last look
(``freshness``), since the lock's previous holder may have committed just before releasing it.  A release after
``close`` (a turn still inside ``hold`` at shutdown, say) does nothing: closing freed the lock.  A process forked
while holding the file does not share its locks: the child drops the inherited descriptor and opens its own on
first use (``os.register_at_fork``).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import secrets
import struct
import weakref
import zlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import TracebackType

import structlog

from gateway.errors import StorageUnavailable

log = structlog.get_logger("gateway")

SUFFIX = "-locks"
CONVERSATION_BYTES = 1 << 31
EXCLUSIVE_BASE, EXCLUSIVE_BYTES = 1 << 31, 1 << 16
LIVENESS_BASE, LIVENESS_BYTES = 1 << 32, 1 << 30
FIRST_PAUSE, LONGEST_PAUSE = 0.001, 0.020  # seconds between tries of a busy byte

# OFD locks when the kernel has them; else process-associated ones, equivalent for one descriptor per process.
_SETLK = getattr(fcntl, "F_OFD_SETLK", fcntl.F_SETLK)
_GETLK = getattr(fcntl, "F_OFD_GETLK", fcntl.F_GETLK)
# struct flock on Linux (and the BSDs' first fields): l_type, l_whence, l_start, l_len, l_pid (0 for OFD locks).
_FLOCK = struct.Struct("hhqqi4x")
_BUSY = (errno.EAGAIN, errno.EACCES)


def conversation_byte(key: tuple[str, str]) -> int:
    """The byte of the side file that stands for a conversation, the same in every process."""
    owner, external_id = key
    return zlib.crc32(_utf8(external_id), zlib.crc32(_utf8(owner) + b"\0")) % CONVERSATION_BYTES


def exclusive_byte(name: str) -> int:
    return EXCLUSIVE_BASE + zlib.crc32(_utf8(name)) % EXCLUSIVE_BYTES


def _utf8(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")  # an id from JSON may hold a lone surrogate


class FileLocks:
    """The locks of one process on one database's side file, opened on first use (a read-only command never
    needs it, and a read-only directory does not stop it); ``close`` frees whatever is still held."""

    def __init__(self, database: Path, *, taken: Callable[[], None] | None = None) -> None:
        resolved = database.resolve()
        self.path = resolved.with_name(resolved.name + SUFFIX)
        self._database = database
        self._taken = taken
        self._fd: int | None = None
        self._held: dict[int, int] = {}  # byte -> how many holders in this process
        # Moved on by ``close`` and in a forked child: a hold from before releases nothing (``_release``).
        self._generation = 0
        self._process: tuple[int, int] | None = None  # (id, liveness byte), see ``process``
        _OPENED.add(self)

    def hold(self, key: tuple[str, str]) -> _Hold:
        """``async with locks.hold(key):`` the block runs holding the conversation's byte against every other
        process; ``StorageUnavailable`` when the side file cannot be opened or locked."""
        return _Hold(self, conversation_byte(key))

    def rank(self, key: tuple[str, str]) -> int:
        return conversation_byte(key)

    @contextlib.asynccontextmanager
    async def exclusive(self, name: str) -> AsyncIterator[bool]:
        """True for at most one block at a time across the processes (this one's other blocks included); never
        waits: False at once when another holds it."""
        byte = exclusive_byte(name)
        mine = not self._held.get(byte) and self._try(byte)
        if mine:
            self._held[byte] = 1
        generation = self._generation
        try:
            yield mine
        finally:
            if mine:
                self._release(byte, generation)

    def process(self) -> tuple[int, int]:
        """This process's identity for the shared limits: a random id, and the byte whose lock it holds for as
        long as it lives (``alive``).  Claimed on first use; a byte a dead process held may be claimed again, so
        its id tells the new owner from the old."""
        if self._process is None:
            for _ in range(64):
                byte = LIVENESS_BASE + secrets.randbelow(LIVENESS_BYTES)
                if not self._held.get(byte) and self._try(byte):
                    self._held[byte] = 1
                    self._process = (secrets.randbits(62), byte)
                    break
            else:  # pragma: no cover - 64 draws from 2**30 bytes all held
                raise StorageUnavailable("No free liveness lock in the lock file.", code="storage_unavailable")
        return self._process

    def alive(self, byte: int) -> bool:
        """Whether another process holds ``byte`` (this process's own locks never count: ask ``process``)."""
        try:
            answer = fcntl.fcntl(self._descriptor(), _GETLK, _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, byte, 1, 0))
        except OSError as exc:
            raise _unavailable(self.path, exc) from exc
        return bool(_FLOCK.unpack(answer)[0] != fcntl.F_UNLCK)

    def close(self) -> None:
        """Close the side file: the kernel frees every lock still held through it; blocks still inside ``hold`` or
        ``exclusive`` release nothing when they end."""
        _OPENED.discard(self)
        fd, self._fd = self._fd, None
        self._generation += 1
        self._held.clear()
        self._process = None
        if fd is not None:
            os.close(fd)

    # --- the system calls ---------------------------------------------------------------------------------------

    def _take(self, byte: int) -> bool:
        """Hold a conversation's ``byte`` now if it can be had without waiting (counting holders in this process;
        a real taking, not a re-entry, calls ``taken``)."""
        count = self._held.get(byte, 0)
        if count:
            self._held[byte] = count + 1
            return True
        if self._try(byte):
            self._held[byte] = 1
            if self._taken is not None:
                self._taken()
            return True
        return False

    async def _wait(self, byte: int) -> None:
        pause = FIRST_PAUSE
        while True:
            await asyncio.sleep(pause)
            if self._take(byte):
                return
            pause = min(pause * 2, LONGEST_PAUSE)

    def _release(self, byte: int, generation: int) -> None:
        """Release a holder of ``byte`` taken in ``generation``: nothing when the file was closed (or this process
        forked) since, or when the byte is not held, rather than a KeyError over the block's own outcome."""
        if generation != self._generation:
            return
        count = self._held.get(byte, 0) - 1
        if count > 0:
            self._held[byte] = count
            return
        if count < 0:
            return
        del self._held[byte]
        try:
            fcntl.fcntl(self._descriptor(), _SETLK, _FLOCK.pack(fcntl.F_UNLCK, os.SEEK_SET, byte, 1, 0))
        except (OSError, StorageUnavailable) as exc:  # not raised over the block's own outcome; exit frees it
            log.warning("lock_release_failed", path=str(self.path), error=str(exc))

    def _try(self, byte: int) -> bool:
        try:
            fcntl.fcntl(self._descriptor(), _SETLK, _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, byte, 1, 0))
        except OSError as exc:
            if exc.errno in _BUSY:
                return False
            raise _unavailable(self.path, exc) from exc
        return True

    def _descriptor(self) -> int:
        if self._fd is None:
            try:
                # The database file's permissions, as SQLite gives its -wal and -shm files.
                mode = self._database.stat().st_mode & 0o777 if self._database.exists() else 0o644
                self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, mode)
            except OSError as exc:
                raise _unavailable(self.path, exc) from exc
        return self._fd

    def _after_fork(self) -> None:
        # The child shares the parent's open file description, and with it the parent's locks: drop the
        # descriptor (the parent's locks stay the parent's) and start from nothing held.
        fd, self._fd = self._fd, None
        self._generation += 1
        self._held.clear()
        self._process = None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)


class _Hold:
    # A plain class rather than @asynccontextmanager: every chat turn enters one (see core.ordering._Hold).
    __slots__ = ("_byte", "_generation", "_locks")

    def __init__(self, locks: FileLocks, byte: int) -> None:
        self._locks = locks
        self._byte = byte
        self._generation = -1

    async def __aenter__(self) -> None:
        if not self._locks._take(self._byte):
            await self._locks._wait(self._byte)
        self._generation = self._locks._generation

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._locks._release(self._byte, self._generation)


def _unavailable(path: Path, exc: OSError) -> StorageUnavailable:
    log.warning("lock_file_failed", path=str(path), error=exc.strerror)
    return StorageUnavailable("The conversation store cannot be locked.", code="storage_unavailable")


_OPENED: weakref.WeakSet[FileLocks] = weakref.WeakSet()


def _forget_parents_locks() -> None:
    for locks in list(_OPENED):
        locks._after_fork()


os.register_at_fork(after_in_child=_forget_parents_locks)
