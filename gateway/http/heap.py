"""Handing freed memory back to the operating system after large requests.

A multi-megabyte turn leaves tens of megabytes of freed blocks behind (the raw body, the parsed message, the
upstream body, the stored JSON), and glibc's allocator keeps most of them mapped: resident memory ratchets up with
every large turn and never comes down.  ``malloc_trim`` returns them.  It costs a few milliseconds, so it runs only
after requests whose body was large, once the handler is done.  Elsewhere than glibc it does nothing.
"""

from __future__ import annotations

import asyncio
import ctypes
from collections.abc import Callable

# Bodies at least this large are followed by a trim.
TRIM_AFTER_BYTES = 1 << 20


def _malloc_trim() -> Callable[[], object]:
    try:
        trim = ctypes.CDLL(None).malloc_trim  # the process's own symbols: libc is among them, no search needed
    except (OSError, AttributeError):  # not glibc
        return lambda: None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return lambda: trim(0)


# After the request is done with: by then its body, parsed and re-serialized copies are garbage.
TRIM_DELAY_SECONDS = 0.05


class HeapTrimmer:
    """Trims the heap after large requests; libc is looked up once, at start-up (not at import)."""

    def __init__(self) -> None:
        self._trim = _malloc_trim()
        self._pending: asyncio.TimerHandle | None = None

    def after(self, body_bytes: int | None) -> None:
        """A request is over: trim shortly if its body was large (one trim for a burst of them)."""
        if body_bytes is None or body_bytes < TRIM_AFTER_BYTES or self._pending is not None:
            return
        self._pending = asyncio.get_running_loop().call_later(TRIM_DELAY_SECONDS, self._run)

    def _run(self) -> None:
        self._pending = None
        self._trim()
