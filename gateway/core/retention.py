"""Retention: the server's periodic purge of conversations idle longer than ``retention.idle_days``.

The purge itself is ``ConversationsService.purge``, which ``gateway purge`` also runs; this module only repeats it
on a timer and reports what it did.  A failed round is logged and retried at the next interval: retention must
never take the server down.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

import structlog

from gateway.core.conversations import ConversationsService
from gateway.errors import GatewayError

log = structlog.get_logger("gateway")
SECONDS_PER_DAY = 86400.0


async def purge_periodically(
    service: ConversationsService,
    idle_days: float,
    interval: float,
    exclusive: Callable[[str], AbstractAsyncContextManager[bool]],
) -> None:
    """Purge now, then every ``interval`` seconds, until cancelled; ``exclusive`` (``Storage.exclusive``) lets one
    process of those sharing the database purge at a time, the others skipping the round."""
    while True:
        try:
            async with exclusive("purge") as mine:
                purged = await service.purge(idle_days * SECONDS_PER_DAY) if mine else 0
        except GatewayError as exc:
            log.warning("purge_failed", error=exc.code)
        else:
            if purged:
                log.info("conversations_purged", count=purged, idle_days=idle_days)
        await asyncio.sleep(interval)
