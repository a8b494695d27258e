"""Schema migrations: an ordered list of functions, each applied once and recorded by name.

Never edit a migration that has shipped; append a new ``mNNN_...`` function instead.  ``migrate`` runs each pending
one in its own ``BEGIN IMMEDIATE`` transaction, so a database is always at a recorded version, and a second process
migrating at the same moment waits on the lock instead of applying a step twice.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import aiosqlite

from gateway.storage.sqlite.search import m012_message_search

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
    # No index on updated_at: every turn would move its entry, doubling the pages a turn writes (measured).
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


async def m002_turn_writes(db: aiosqlite.Connection) -> None:
    # A whole turn is one INSERT into this view: a single statement is atomic on its own and costs one call,
    # however many messages the turn holds.  The trigger creates or updates the conversation, then appends the
    # turn's messages (a JSON array of message-JSON strings, stored byte for byte) after the ones already there.
    await db.execute(
        """
        CREATE VIEW turn_writes AS SELECT
            NULL AS owner, NULL AS external_id, NULL AS at, NULL AS model, NULL AS system_json,
            NULL AS bodies_json, NULL AS interrupted, NULL AS usage_json,
            NULL AS prompt_tokens, NULL AS completion_tokens, NULL AS cached_tokens
        WHERE 0
        """
    )
    await db.execute(
        """
        CREATE TRIGGER turn_writes_insert INSTEAD OF INSERT ON turn_writes
        BEGIN
            INSERT INTO conversations (owner, external_id, created_at, updated_at, model, system_json,
                                       message_count, prompt_tokens, completion_tokens, cached_tokens)
            VALUES (NEW.owner, NEW.external_id, NEW.at, NEW.at, NEW.model, NEW.system_json,
                    json_array_length(NEW.bodies_json), NEW.prompt_tokens, NEW.completion_tokens, NEW.cached_tokens)
            ON CONFLICT (owner, external_id) DO UPDATE SET
                updated_at = excluded.updated_at,
                model = COALESCE(excluded.model, conversations.model),
                system_json = COALESCE(excluded.system_json, conversations.system_json),
                message_count = conversations.message_count + excluded.message_count,
                prompt_tokens = conversations.prompt_tokens + excluded.prompt_tokens,
                completion_tokens = conversations.completion_tokens + excluded.completion_tokens,
                cached_tokens = conversations.cached_tokens + excluded.cached_tokens;
            -- The last message is the reply: it alone carries the interrupted flag and the usage.
            INSERT INTO messages (conversation_id, seq, role, body, created_at, interrupted, usage_json)
            SELECT c.id, c.message_count - json_array_length(NEW.bodies_json) + b.key,
                   json_extract(b.value, '$.role'), b.value, NEW.at,
                   CASE WHEN b.key = json_array_length(NEW.bodies_json) - 1 THEN NEW.interrupted ELSE 0 END,
                   CASE WHEN b.key = json_array_length(NEW.bodies_json) - 1 THEN NEW.usage_json END
              FROM conversations AS c, json_each(NEW.bodies_json) AS b
             WHERE c.owner = NEW.owner AND c.external_id = NEW.external_id;
        END
        """
    )


async def m003_conversation_metadata(db: aiosqlite.Connection) -> None:
    # Client-set key/value pairs (a JSON object), shown by the conversations API.
    await db.execute("ALTER TABLE conversations ADD COLUMN metadata_json TEXT")


async def m004_gateway_keys(db: aiosqlite.Connection) -> None:
    # Only the SHA-256 of a key is kept; the key itself is shown once, when created.
    await db.execute(
        """
        CREATE TABLE gateway_keys (
            id         TEXT PRIMARY KEY,
            key_hash   TEXT NOT NULL UNIQUE,
            tenant     TEXT NOT NULL,
            name       TEXT,
            admin      INTEGER NOT NULL DEFAULT 0,
            created_at REAL NOT NULL,
            revoked_at REAL
        )
        """
    )


async def m005_context_window(db: aiosqlite.Connection) -> None:
    # Where the upstream window of the history starts (a message seq; cuts stay put between turns so requests
    # share a prefix), and the summary of what lies before it (a system message's JSON), if any.
    await db.execute("ALTER TABLE conversations ADD COLUMN window_start INTEGER NOT NULL DEFAULT 0")
    await db.execute("ALTER TABLE conversations ADD COLUMN summary_json TEXT")


async def m006_history_bytes_and_deleted_conversations(db: aiosqlite.Connection) -> None:
    # history_bytes: the stored history's JSON size (UTF-8 bytes), kept with each write, so a turn knows how large
    # a conversation is before reading it (large ones are read off the event loop; limits.max_history_bytes).
    await db.execute("ALTER TABLE conversations ADD COLUMN history_bytes INTEGER NOT NULL DEFAULT 0")
    await db.execute(
        """
        UPDATE conversations SET history_bytes =
            (SELECT coalesce(sum(length(CAST(body AS BLOB))), 0) FROM messages WHERE conversation_id = conversations.id)
        """
    )
    # The turn trigger anew: it adds history_bytes, and a turn planned against an existing conversation (existed
    # = 1) that was deleted meanwhile (by the CLI, another process) is refused instead of bringing the
    # conversation back with its deleted history's counters: a delete by any path wins.
    await db.execute("DROP TRIGGER turn_writes_insert")
    await db.execute("DROP VIEW turn_writes")
    await db.execute(
        """
        CREATE VIEW turn_writes AS SELECT
            NULL AS owner, NULL AS external_id, NULL AS at, NULL AS model, NULL AS system_json,
            NULL AS bodies_json, NULL AS interrupted, NULL AS usage_json,
            NULL AS prompt_tokens, NULL AS completion_tokens, NULL AS cached_tokens, NULL AS existed
        WHERE 0
        """
    )
    await db.execute(
        """
        CREATE TRIGGER turn_writes_insert INSTEAD OF INSERT ON turn_writes
        BEGIN
            SELECT RAISE(ABORT, 'conversation_deleted')
             WHERE NEW.existed AND NOT EXISTS (
                   SELECT 1 FROM conversations WHERE owner = NEW.owner AND external_id = NEW.external_id);
            INSERT INTO conversations (owner, external_id, created_at, updated_at, model, system_json,
                                       message_count, prompt_tokens, completion_tokens, cached_tokens, history_bytes)
            VALUES (NEW.owner, NEW.external_id, NEW.at, NEW.at, NEW.model, NEW.system_json,
                    json_array_length(NEW.bodies_json), NEW.prompt_tokens, NEW.completion_tokens, NEW.cached_tokens,
                    (SELECT coalesce(sum(length(CAST(value AS BLOB))), 0) FROM json_each(NEW.bodies_json)))
            ON CONFLICT (owner, external_id) DO UPDATE SET
                updated_at = excluded.updated_at,
                model = COALESCE(excluded.model, conversations.model),
                system_json = COALESCE(excluded.system_json, conversations.system_json),
                message_count = conversations.message_count + excluded.message_count,
                prompt_tokens = conversations.prompt_tokens + excluded.prompt_tokens,
                completion_tokens = conversations.completion_tokens + excluded.completion_tokens,
                cached_tokens = conversations.cached_tokens + excluded.cached_tokens,
                history_bytes = conversations.history_bytes + excluded.history_bytes;
            -- The last message is the reply: it alone carries the interrupted flag and the usage.
            INSERT INTO messages (conversation_id, seq, role, body, created_at, interrupted, usage_json)
            SELECT c.id, c.message_count - json_array_length(NEW.bodies_json) + b.key,
                   json_extract(b.value, '$.role'), b.value, NEW.at,
                   CASE WHEN b.key = json_array_length(NEW.bodies_json) - 1 THEN NEW.interrupted ELSE 0 END,
                   CASE WHEN b.key = json_array_length(NEW.bodies_json) - 1 THEN NEW.usage_json END
              FROM conversations AS c, json_each(NEW.bodies_json) AS b
             WHERE c.owner = NEW.owner AND c.external_id = NEW.external_id;
        END
        """
    )


async def m007_idempotent_replies(db: aiosqlite.Connection) -> None:
    # The reply of a turn that came with an Idempotency-Key, written in the turn's own transaction, so that a
    # retry with the key gets it again: the body as the client got it (a stream's as one completion), and a hash
    # of the request, so that the key cannot be reused for a different request.
    await db.execute(
        """
        CREATE TABLE idempotent_replies (
            conversation_id INTEGER NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
            key             TEXT NOT NULL,
            request_hash    TEXT NOT NULL,
            created_at      REAL NOT NULL,
            body            BLOB NOT NULL,
            PRIMARY KEY (conversation_id, key)
        ) WITHOUT ROWID
        """
    )


async def m008_responses(db: aiosqlite.Connection) -> None:
    # A Responses API call recorded with the turn that answered it, in that turn's transaction: the reply's seq
    # and the seq of the first message its request added (its input items run from there up to the reply), and
    # the request-side fields of the Response object (JSON).  Found by its id (unique across owners; the owner is
    # the conversation's); a cut (a rewind, a replacing turn) removes those whose reply it removes, through the
    # UNIQUE index, which also serves the cascade when a conversation is deleted: one reply, one response.
    await db.execute(
        """
        CREATE TABLE responses (
            id              TEXT PRIMARY KEY,
            conversation_id INTEGER NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
            first_seq       INTEGER NOT NULL,
            reply_seq       INTEGER NOT NULL,
            created_at      REAL NOT NULL,
            request_json    TEXT NOT NULL,
            UNIQUE (conversation_id, reply_seq)
        ) WITHOUT ROWID
        """
    )


async def m009_versions_and_keys_version(db: aiosqlite.Connection) -> None:
    # Several processes (workers, the CLI) on one file.  ``version`` moves on with every write that changes a
    # conversation's history, window, system prompt or counters, so a process's cached history is checked with one
    # indexed read instead of being dropped whenever any other process commits anything; a turn planned from
    # version N records nothing if the row no longer is at N (the fence, ``Turn.expected_version``).  Versions start
    # at 1 again when a deleted conversation is created anew, so ``incarnation``, a random number drawn whenever a
    # row is inserted, tells such a row from the one a cache holds (SQLite may even reuse the row id).
    await db.execute("ALTER TABLE conversations ADD COLUMN version INTEGER NOT NULL DEFAULT 1")
    await db.execute("ALTER TABLE conversations ADD COLUMN incarnation INTEGER NOT NULL DEFAULT 0")
    await db.execute("UPDATE conversations SET incarnation = random()")
    # Counters other processes read when the file changed: 'keys_version' moves with each key created or revoked,
    # so that turns written by other workers do not make every process re-read the keys.
    await db.execute("CREATE TABLE gateway_meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID")
    await db.execute("INSERT INTO gateway_meta (name, value) VALUES ('keys_version', 0)")
    # The turn trigger anew: the fence (expected_version), the version moved on by the upsert, and the incarnation
    # of a row it creates.  Otherwise as m006's.
    await db.execute("DROP TRIGGER turn_writes_insert")
    await db.execute("DROP VIEW turn_writes")
    await db.execute(
        """
        CREATE VIEW turn_writes AS SELECT
            NULL AS owner, NULL AS external_id, NULL AS at, NULL AS model, NULL AS system_json,
            NULL AS bodies_json, NULL AS interrupted, NULL AS usage_json,
            NULL AS prompt_tokens, NULL AS completion_tokens, NULL AS cached_tokens, NULL AS existed,
            NULL AS expected_version
        WHERE 0
        """
    )
    await db.execute(
        """
        CREATE TRIGGER turn_writes_insert INSTEAD OF INSERT ON turn_writes
        BEGIN
            SELECT RAISE(ABORT, 'conversation_deleted')
             WHERE NEW.existed AND NOT EXISTS (
                   SELECT 1 FROM conversations WHERE owner = NEW.owner AND external_id = NEW.external_id);
            SELECT RAISE(ABORT, 'conversation_changed')
             WHERE NEW.expected_version IS NOT NULL AND NEW.expected_version IS NOT (
                   SELECT version FROM conversations WHERE owner = NEW.owner AND external_id = NEW.external_id);
            INSERT INTO conversations (owner, external_id, created_at, updated_at, model, system_json,
                                       message_count, prompt_tokens, completion_tokens, cached_tokens, history_bytes,
                                       incarnation)
            VALUES (NEW.owner, NEW.external_id, NEW.at, NEW.at, NEW.model, NEW.system_json,
                    json_array_length(NEW.bodies_json), NEW.prompt_tokens, NEW.completion_tokens, NEW.cached_tokens,
                    (SELECT coalesce(sum(length(CAST(value AS BLOB))), 0) FROM json_each(NEW.bodies_json)),
                    random())
            ON CONFLICT (owner, external_id) DO UPDATE SET
                updated_at = excluded.updated_at,
                model = COALESCE(excluded.model, conversations.model),
                system_json = COALESCE(excluded.system_json, conversations.system_json),
                message_count = conversations.message_count + excluded.message_count,
                prompt_tokens = conversations.prompt_tokens + excluded.prompt_tokens,
                completion_tokens = conversations.completion_tokens + excluded.completion_tokens,
                cached_tokens = conversations.cached_tokens + excluded.cached_tokens,
                history_bytes = conversations.history_bytes + excluded.history_bytes,
                version = conversations.version + 1;
            -- The last message is the reply: it alone carries the interrupted flag and the usage.
            INSERT INTO messages (conversation_id, seq, role, body, created_at, interrupted, usage_json)
            SELECT c.id, c.message_count - json_array_length(NEW.bodies_json) + b.key,
                   json_extract(b.value, '$.role'), b.value, NEW.at,
                   CASE WHEN b.key = json_array_length(NEW.bodies_json) - 1 THEN NEW.interrupted ELSE 0 END,
                   CASE WHEN b.key = json_array_length(NEW.bodies_json) - 1 THEN NEW.usage_json END
              FROM conversations AS c, json_each(NEW.bodies_json) AS b
             WHERE c.owner = NEW.owner AND c.external_id = NEW.external_id;
        END
        """
    )


async def m010_shared_limits(db: aiosqlite.Connection) -> None:
    # Per-key limits counted across worker processes (``limits``; only used with server.workers > 1): the start
    # time of each request admitted in the last minute, and a row per request in flight, owned by a process whose
    # liveness is a lock it holds on the side file (``locks``): a dead process's rows stop counting.  Keyed by the
    # limit key first, the only access path (no separate index); ``nonce`` tells apart starts at the same time.
    await db.execute(
        """
        CREATE TABLE limit_starts (
            key   TEXT NOT NULL,
            at    REAL NOT NULL,
            nonce INTEGER NOT NULL,
            PRIMARY KEY (key, at, nonce)
        ) WITHOUT ROWID
        """
    )
    await db.execute(
        """
        CREATE TABLE limit_slots (
            key      TEXT NOT NULL,
            id       TEXT NOT NULL,
            process  INTEGER NOT NULL,
            liveness INTEGER NOT NULL,
            PRIMARY KEY (key, id)
        ) WITHOUT ROWID
        """
    )


async def m011_message_ledger(db: aiosqlite.Connection) -> None:
    # A turn's ledger (``Turn.ledger``: what the gateway alone knows of the request -- its model, cache mode, the
    # history the window left unsent), JSON on the reply row beside the upstream's usage; NULL on every other row
    # and on replies recorded before this migration.  The turn trigger anew to carry it; otherwise as m009's.
    await db.execute("ALTER TABLE messages ADD COLUMN ledger_json TEXT")
    await db.execute("DROP TRIGGER turn_writes_insert")
    await db.execute("DROP VIEW turn_writes")
    await db.execute(
        """
        CREATE VIEW turn_writes AS SELECT
            NULL AS owner, NULL AS external_id, NULL AS at, NULL AS model, NULL AS system_json,
            NULL AS bodies_json, NULL AS interrupted, NULL AS usage_json,
            NULL AS prompt_tokens, NULL AS completion_tokens, NULL AS cached_tokens, NULL AS existed,
            NULL AS expected_version, NULL AS ledger_json
        WHERE 0
        """
    )
    await db.execute(
        """
        CREATE TRIGGER turn_writes_insert INSTEAD OF INSERT ON turn_writes
        BEGIN
            SELECT RAISE(ABORT, 'conversation_deleted')
             WHERE NEW.existed AND NOT EXISTS (
                   SELECT 1 FROM conversations WHERE owner = NEW.owner AND external_id = NEW.external_id);
            SELECT RAISE(ABORT, 'conversation_changed')
             WHERE NEW.expected_version IS NOT NULL AND NEW.expected_version IS NOT (
                   SELECT version FROM conversations WHERE owner = NEW.owner AND external_id = NEW.external_id);
            INSERT INTO conversations (owner, external_id, created_at, updated_at, model, system_json,
                                       message_count, prompt_tokens, completion_tokens, cached_tokens, history_bytes,
                                       incarnation)
            VALUES (NEW.owner, NEW.external_id, NEW.at, NEW.at, NEW.model, NEW.system_json,
                    json_array_length(NEW.bodies_json), NEW.prompt_tokens, NEW.completion_tokens, NEW.cached_tokens,
                    (SELECT coalesce(sum(length(CAST(value AS BLOB))), 0) FROM json_each(NEW.bodies_json)),
                    random())
            ON CONFLICT (owner, external_id) DO UPDATE SET
                updated_at = excluded.updated_at,
                model = COALESCE(excluded.model, conversations.model),
                system_json = COALESCE(excluded.system_json, conversations.system_json),
                message_count = conversations.message_count + excluded.message_count,
                prompt_tokens = conversations.prompt_tokens + excluded.prompt_tokens,
                completion_tokens = conversations.completion_tokens + excluded.completion_tokens,
                cached_tokens = conversations.cached_tokens + excluded.cached_tokens,
                history_bytes = conversations.history_bytes + excluded.history_bytes,
                version = conversations.version + 1;
            -- The last message is the reply: it alone carries the interrupted flag, the usage and the ledger.
            INSERT INTO messages (conversation_id, seq, role, body, created_at, interrupted, usage_json, ledger_json)
            SELECT c.id, c.message_count - json_array_length(NEW.bodies_json) + b.key,
                   json_extract(b.value, '$.role'), b.value, NEW.at,
                   CASE WHEN b.key = json_array_length(NEW.bodies_json) - 1 THEN NEW.interrupted ELSE 0 END,
                   CASE WHEN b.key = json_array_length(NEW.bodies_json) - 1 THEN NEW.usage_json END,
                   CASE WHEN b.key = json_array_length(NEW.bodies_json) - 1 THEN NEW.ledger_json END
              FROM conversations AS c, json_each(NEW.bodies_json) AS b
             WHERE c.owner = NEW.owner AND c.external_id = NEW.external_id;
        END
        """
    )


MIGRATIONS: tuple[Migration, ...] = (
    m001_conversations_and_messages,
    m002_turn_writes,
    m003_conversation_metadata,
    m004_gateway_keys,
    m005_context_window,
    m006_history_bytes_and_deleted_conversations,
    m007_idempotent_replies,
    m008_responses,
    m009_versions_and_keys_version,
    m010_shared_limits,
    m011_message_ledger,
    m012_message_search,  # in ``search``, with the queries of the index it creates
)


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
