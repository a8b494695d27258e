"""Schema migrations: an ordered list of functions, each applied once and recorded by name.

Never edit a migration that has shipped; append a new ``mNNN_...`` function instead.  ``migrate`` runs each pending
one in its own ``BEGIN IMMEDIATE`` transaction, so a database is always at a recorded version, and a second process
migrating at the same moment waits on the lock instead of applying a step twice.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import aiosqlite

Migration = Callable[[aiosqlite.Connection], Awaitable[None]]


async def m001_conversations_and_messages(db: aiosqlite.Connection) -> None:
    # owner + external_id is the client's view of a conversation; the integer id keeps message rows small.
    await db.execute(
        """
        CREATE TABLE conversations (
            id                INTEGER PRIMARY KEY,
            owner             TEXT NOT NULL,
            external_id       TEXT NOT NULL,
            created_at        REAL NOT NULL,
            updated_at        REAL NOT NULL,
            model             TEXT,
            system_json       TEXT,
            message_count     INTEGER NOT NULL DEFAULT 0,
            prompt_tokens     INTEGER NOT NULL DEFAULT 0,
            completion_tokens INTEGER NOT NULL DEFAULT 0,
            cached_tokens     INTEGER NOT NULL DEFAULT 0,
            UNIQUE (owner, external_id)
        )
        """
    )
    # Listing an owner's conversations by recent activity.
    await db.execute("CREATE INDEX conversations_owner_updated ON conversations (owner, updated_at DESC)")
    # The UNIQUE (conversation_id, seq) index is the only access path a turn needs: history in order.
    await db.execute(
        """
        CREATE TABLE messages (
            id              INTEGER PRIMARY KEY,
            conversation_id INTEGER NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
            seq             INTEGER NOT NULL,
            role            TEXT NOT NULL,
            body            TEXT NOT NULL,
            created_at      REAL NOT NULL,
            interrupted     INTEGER NOT NULL DEFAULT 0,
            usage_json      TEXT,
            UNIQUE (conversation_id, seq)
        )
        """
    )


MIGRATIONS: tuple[Migration, ...] = (m001_conversations_and_messages,)


async def migrate(db: aiosqlite.Connection) -> list[str]:
    """Apply pending migrations in order; return the names applied now."""
    await db.execute("CREATE TABLE IF NOT EXISTS schema_migrations (name TEXT PRIMARY KEY, applied_at REAL NOT NULL)")
    applied_now: list[str] = []
    for step in MIGRATIONS:
        await db.execute("BEGIN IMMEDIATE")
        try:
            rows = await db.execute_fetchall("SELECT 1 FROM schema_migrations WHERE name = ?", (step.__name__,))
            if not list(rows):
                await step(db)
                await db.execute(
                    "INSERT INTO schema_migrations (name, applied_at) VALUES (?, ?)",
                    (step.__name__, time.time()),
                )
                applied_now.append(step.__name__)
            await db.execute("COMMIT")
        except BaseException:
            await db.execute("ROLLBACK")
            raise
    return applied_now
