"""PostgreSQL schema migrations: an ordered list of functions, each applied once and recorded by name.

Never edit a migration that has shipped; append a new ``pNNN_...`` function (here, or in ``search`` for the search
index; for the coordination tables, a step in ``coordination_schema``) instead.  ``migrate`` runs each pending step
in its own transaction holding ``pg_advisory_xact_lock(MIGRATION_LOCK)``, so two replicas starting at once apply it
exactly once: the second waits for the first's commit, then finds the step recorded.

Data model (the SQLite backend's, see ``gateway.storage.sqlite.store``): a ``conversations`` row per (owner,
external id) with its system prompt, window, counters and ``version`` (moved on by every change, the turn fence);
a ``messages`` row per message, its JSON as TEXT byte for byte (never jsonb, which reorders keys); idempotent
replies and Responses API records that go with the conversation (ON DELETE CASCADE).  Row ids are identities,
never reused.  A turn is one call of the PL/pgSQL function ``gateway_record_turn`` (one round trip: ``turns``).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import asyncpg

from gateway.storage.postgres.coordination_schema import COORDINATION_MIGRATIONS
from gateway.storage.postgres.search import p003_message_search

Migration = Callable[[asyncpg.Connection], Awaitable[None]]

# The advisory lock key migrations hold ("gateway migrate" as a number); any constant every process agrees on.
MIGRATION_LOCK = 0x6761_7465_7761_7931

_TABLES = """
CREATE TABLE conversations (
    id                BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    owner             TEXT NOT NULL,
    external_id       TEXT NOT NULL,
    created_at        DOUBLE PRECISION NOT NULL,
    updated_at        DOUBLE PRECISION NOT NULL,
    model             TEXT,
    system_json       TEXT,
    metadata_json     TEXT,
    message_count     INTEGER NOT NULL DEFAULT 0,
    prompt_tokens     BIGINT NOT NULL DEFAULT 0,
    completion_tokens BIGINT NOT NULL DEFAULT 0,
    cached_tokens     BIGINT NOT NULL DEFAULT 0,
    window_start      INTEGER NOT NULL DEFAULT 0,
    summary_json      TEXT,
    history_bytes     BIGINT NOT NULL DEFAULT 0,
    version           BIGINT NOT NULL DEFAULT 1,
    UNIQUE (owner, external_id)
);
-- Listing by activity and the idle purge.  Unlike SQLite (where an index on updated_at doubled the pages a turn
-- writes), a turn's UPDATE here writes a new row version anyway, and this index is what keeps listing cheap.
CREATE INDEX conversations_activity ON conversations (updated_at, id);
CREATE TABLE messages (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    conversation_id BIGINT NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    seq             INTEGER NOT NULL,
    role            TEXT NOT NULL,
    body            TEXT NOT NULL,
    created_at      DOUBLE PRECISION NOT NULL,
    interrupted     BOOLEAN NOT NULL DEFAULT false,
    usage_json      TEXT,
    UNIQUE (conversation_id, seq)
);
CREATE TABLE gateway_keys (
    id         TEXT PRIMARY KEY,
    key_hash   TEXT NOT NULL UNIQUE,
    tenant     TEXT NOT NULL,
    name       TEXT,
    admin      BOOLEAN NOT NULL DEFAULT false,
    created_at DOUBLE PRECISION NOT NULL,
    revoked_at DOUBLE PRECISION
);
CREATE TABLE idempotent_replies (
    conversation_id BIGINT NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    key             TEXT NOT NULL,
    request_hash    TEXT NOT NULL,
    created_at      DOUBLE PRECISION NOT NULL,
    body            BYTEA NOT NULL,
    PRIMARY KEY (conversation_id, key)
);
CREATE TABLE responses (
    id              TEXT PRIMARY KEY,
    conversation_id BIGINT NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    first_seq       INTEGER NOT NULL,
    reply_seq       INTEGER NOT NULL,
    created_at      DOUBLE PRECISION NOT NULL,
    request_json    TEXT NOT NULL,
    UNIQUE (conversation_id, reply_seq)
);
-- Named counters: 'keys_version' (bumped with every key change, read by every replica's key store).
CREATE TABLE gateway_meta (name TEXT PRIMARY KEY, value BIGINT NOT NULL);
"""


def _token_sum(path: str) -> str:
    # As SQLite's json_type(...) = 'integer' AND >= 0: only whole, non-negative numbers count (5.0, -1, "5" do not).
    return (
        f"coalesce(sum(CASE WHEN jsonb_typeof(usage_json::jsonb #> '{path}') = 'number'"
        f" AND (usage_json::jsonb #>> '{path}') ~ '^[0-9]{{1,18}}$'"
        f" THEN (usage_json::jsonb #>> '{path}')::bigint END), 0)"
    )


# Counters, size and token totals recounted from the messages held; version moved on; activity time p_at, or
# kept when NULL.  Used after every change that removes or rewrites messages (a cut, a fork, an import, an edit).
_RECOUNT_FUNCTION = f"""
CREATE FUNCTION gateway_recount(p_conversation BIGINT, p_at DOUBLE PRECISION) RETURNS VOID
LANGUAGE sql AS $$
UPDATE conversations SET
    (message_count, prompt_tokens, completion_tokens, cached_tokens, history_bytes) = (
        SELECT count(*), {_token_sum("{prompt_tokens}")}, {_token_sum("{completion_tokens}")},
               {_token_sum("{prompt_tokens_details,cached_tokens}")}, coalesce(sum(octet_length(body)), 0)
          FROM messages WHERE conversation_id = conversations.id),
    version = version + 1,
    updated_at = coalesce(p_at, updated_at)
 WHERE id = p_conversation
$$
"""  # noqa: S608 (constants only)

# The cut of SQLite's ``turns.cut_statements``: messages from p_seq on go; a window that began after the cut is
# reset (its summary describes turns that are gone); counters recounted; idempotent replies forgotten (they
# answered a history that is gone); responses whose reply goes go too.  Returns the number of messages removed.
_CUT_FUNCTION = """
CREATE FUNCTION gateway_cut(p_conversation BIGINT, p_seq INTEGER, p_at DOUBLE PRECISION) RETURNS INTEGER
LANGUAGE plpgsql AS $$
DECLARE
    removed INTEGER;
BEGIN
    -- The row first, as a turn locks it: a cut and a turn on one conversation then run one after the other.
    PERFORM 1 FROM conversations WHERE id = p_conversation FOR UPDATE;
    DELETE FROM messages WHERE conversation_id = p_conversation AND seq >= p_seq;
    GET DIAGNOSTICS removed = ROW_COUNT;
    UPDATE conversations SET window_start = 0, summary_json = NULL WHERE id = p_conversation AND window_start > p_seq;
    PERFORM gateway_recount(p_conversation, p_at);
    DELETE FROM idempotent_replies WHERE conversation_id = p_conversation;
    DELETE FROM responses WHERE conversation_id = p_conversation AND reply_seq >= p_seq;
    RETURN removed;
END
$$
"""

# A whole turn in one call (one round trip).  The fence: with p_expected_version set, the conversation must be
# stored at that version, else nothing is written: SQLSTATE GW002.  A turn planned
# against a stored conversation (p_existed) that is gone by now brings nothing back: SQLSTATE GW001.  The row is
# locked first (FOR UPDATE), so concurrent turns on one conversation commit one after the other, each after the
# other's messages.  A new row starts at version 0 so that with its first turn it is at 1, as any new row is.
# The last of p_bodies is the reply: it alone carries the interrupted flag and the usage.  Returns the
# conversation's row id and the version it is at now (the one read + 1: the cut of p_replace_from is part of the
# same change).
_RECORD_TURN_FUNCTION = """
CREATE FUNCTION gateway_record_turn(
    p_owner TEXT, p_external_id TEXT, p_at DOUBLE PRECISION, p_model TEXT, p_system_json TEXT,
    p_roles TEXT[], p_bodies TEXT[], p_bytes BIGINT, p_interrupted BOOLEAN, p_usage_json TEXT,
    p_prompt_tokens BIGINT, p_completion_tokens BIGINT, p_cached_tokens BIGINT,
    p_existed BOOLEAN, p_expected_version BIGINT, p_replace_from INTEGER,
    p_set_window BOOLEAN, p_window_start INTEGER, p_summary_json TEXT,
    p_reply_key TEXT, p_reply_hash TEXT, p_reply_body BYTEA, p_reply_expires DOUBLE PRECISION,
    p_response_id TEXT, p_response_created DOUBLE PRECISION, p_response_request TEXT,
    OUT o_conversation BIGINT, OUT o_version BIGINT
)
LANGUAGE plpgsql AS $$
DECLARE
    v_id BIGINT;
    v_version BIGINT;
    v_count INTEGER;
    v_added INTEGER := cardinality(p_bodies);
BEGIN
    SELECT id, version INTO v_id, v_version FROM conversations
     WHERE owner = p_owner AND external_id = p_external_id FOR UPDATE;
    IF NOT FOUND THEN
        IF p_existed THEN
            RAISE EXCEPTION 'conversation_deleted' USING ERRCODE = 'GW001';
        END IF;
        IF p_expected_version IS NOT NULL THEN
            RAISE EXCEPTION 'conversation_changed' USING ERRCODE = 'GW002';
        END IF;
        INSERT INTO conversations (owner, external_id, created_at, updated_at, model, system_json, version)
        VALUES (p_owner, p_external_id, p_at, p_at, p_model, p_system_json, 0)
        ON CONFLICT (owner, external_id) DO NOTHING
        RETURNING id, version INTO v_id, v_version;
        IF v_id IS NULL THEN  -- another process created it meanwhile: this turn comes after its first one
            SELECT id, version INTO v_id, v_version FROM conversations
             WHERE owner = p_owner AND external_id = p_external_id FOR UPDATE;
        END IF;
    ELSIF p_expected_version IS NOT NULL AND v_version <> p_expected_version THEN
        RAISE EXCEPTION 'conversation_changed' USING ERRCODE = 'GW002';
    END IF;
    IF p_replace_from IS NOT NULL THEN
        PERFORM gateway_cut(v_id, p_replace_from, NULL);
    END IF;
    UPDATE conversations SET
        updated_at = p_at,
        model = coalesce(p_model, model),
        system_json = coalesce(p_system_json, system_json),
        message_count = message_count + v_added,
        prompt_tokens = prompt_tokens + p_prompt_tokens,
        completion_tokens = completion_tokens + p_completion_tokens,
        cached_tokens = cached_tokens + p_cached_tokens,
        history_bytes = history_bytes + p_bytes,
        window_start = CASE WHEN p_set_window THEN p_window_start ELSE window_start END,
        summary_json = CASE WHEN p_set_window THEN p_summary_json ELSE summary_json END,
        version = v_version + 1
     WHERE id = v_id
    RETURNING message_count INTO v_count;
    INSERT INTO messages (conversation_id, seq, role, body, created_at, interrupted, usage_json)
    SELECT v_id, v_count - v_added + b.ord::INTEGER - 1, b.role, b.body, p_at,
           b.ord = v_added AND p_interrupted, CASE WHEN b.ord = v_added THEN p_usage_json END
      FROM unnest(p_roles, p_bodies) WITH ORDINALITY AS b (role, body, ord);
    IF p_reply_key IS NOT NULL THEN
        DELETE FROM idempotent_replies WHERE conversation_id = v_id AND created_at < p_reply_expires;
        INSERT INTO idempotent_replies (conversation_id, key, request_hash, created_at, body)
        VALUES (v_id, p_reply_key, p_reply_hash, p_at, p_reply_body)
        ON CONFLICT (conversation_id, key) DO UPDATE
            SET request_hash = excluded.request_hash, created_at = excluded.created_at, body = excluded.body;
    END IF;
    IF p_response_id IS NOT NULL THEN
        INSERT INTO responses (id, conversation_id, first_seq, reply_seq, created_at, request_json)
        VALUES (p_response_id, v_id, v_count - v_added, v_count - 1, p_response_created, p_response_request);
    END IF;
    o_conversation := v_id;
    o_version := v_version + 1;
END
$$
"""

# p002: the turn's ledger (``Turn.ledger``) on its reply, beside the usage.  A function is known by its argument
# types: the new one, with one more, is an overload of p001's, which becomes a wrapper passing no ledger, so that
# processes of the previous release still running against this database (a rolling upgrade) keep recording turns.
_OLD_RECORD_TURN_WRAPPER = """
CREATE OR REPLACE FUNCTION gateway_record_turn(
    p_owner TEXT, p_external_id TEXT, p_at DOUBLE PRECISION, p_model TEXT, p_system_json TEXT,
    p_roles TEXT[], p_bodies TEXT[], p_bytes BIGINT, p_interrupted BOOLEAN, p_usage_json TEXT,
    p_prompt_tokens BIGINT, p_completion_tokens BIGINT, p_cached_tokens BIGINT,
    p_existed BOOLEAN, p_expected_version BIGINT, p_replace_from INTEGER,
    p_set_window BOOLEAN, p_window_start INTEGER, p_summary_json TEXT,
    p_reply_key TEXT, p_reply_hash TEXT, p_reply_body BYTEA, p_reply_expires DOUBLE PRECISION,
    p_response_id TEXT, p_response_created DOUBLE PRECISION, p_response_request TEXT,
    OUT o_conversation BIGINT, OUT o_version BIGINT
)
LANGUAGE sql AS $$
SELECT r.o_conversation, r.o_version
  FROM gateway_record_turn($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, NULL::TEXT, $11, $12, $13, $14, $15, $16, $17,
                           $18, $19, $20, $21, $22, $23, $24, $25, $26) AS r
$$
"""
# As p001's, with p_ledger_json after p_usage_json, stored on the reply as the usage is.
_RECORD_TURN_FUNCTION_P002 = """
CREATE FUNCTION gateway_record_turn(
    p_owner TEXT, p_external_id TEXT, p_at DOUBLE PRECISION, p_model TEXT, p_system_json TEXT,
    p_roles TEXT[], p_bodies TEXT[], p_bytes BIGINT, p_interrupted BOOLEAN, p_usage_json TEXT, p_ledger_json TEXT,
    p_prompt_tokens BIGINT, p_completion_tokens BIGINT, p_cached_tokens BIGINT,
    p_existed BOOLEAN, p_expected_version BIGINT, p_replace_from INTEGER,
    p_set_window BOOLEAN, p_window_start INTEGER, p_summary_json TEXT,
    p_reply_key TEXT, p_reply_hash TEXT, p_reply_body BYTEA, p_reply_expires DOUBLE PRECISION,
    p_response_id TEXT, p_response_created DOUBLE PRECISION, p_response_request TEXT,
    OUT o_conversation BIGINT, OUT o_version BIGINT
)
LANGUAGE plpgsql AS $$
DECLARE
    v_id BIGINT;
    v_version BIGINT;
    v_count INTEGER;
    v_added INTEGER := cardinality(p_bodies);
BEGIN
    SELECT id, version INTO v_id, v_version FROM conversations
     WHERE owner = p_owner AND external_id = p_external_id FOR UPDATE;
    IF NOT FOUND THEN
        IF p_existed THEN
            RAISE EXCEPTION 'conversation_deleted' USING ERRCODE = 'GW001';
        END IF;
        IF p_expected_version IS NOT NULL THEN
            RAISE EXCEPTION 'conversation_changed' USING ERRCODE = 'GW002';
        END IF;
        INSERT INTO conversations (owner, external_id, created_at, updated_at, model, system_json, version)
        VALUES (p_owner, p_external_id, p_at, p_at, p_model, p_system_json, 0)
        ON CONFLICT (owner, external_id) DO NOTHING
        RETURNING id, version INTO v_id, v_version;
        IF v_id IS NULL THEN  -- another process created it meanwhile: this turn comes after its first one
            SELECT id, version INTO v_id, v_version FROM conversations
             WHERE owner = p_owner AND external_id = p_external_id FOR UPDATE;
        END IF;
    ELSIF p_expected_version IS NOT NULL AND v_version <> p_expected_version THEN
        RAISE EXCEPTION 'conversation_changed' USING ERRCODE = 'GW002';
    END IF;
    IF p_replace_from IS NOT NULL THEN
        PERFORM gateway_cut(v_id, p_replace_from, NULL);
    END IF;
    UPDATE conversations SET
        updated_at = p_at,
        model = coalesce(p_model, model),
        system_json = coalesce(p_system_json, system_json),
        message_count = message_count + v_added,
        prompt_tokens = prompt_tokens + p_prompt_tokens,
        completion_tokens = completion_tokens + p_completion_tokens,
        cached_tokens = cached_tokens + p_cached_tokens,
        history_bytes = history_bytes + p_bytes,
        window_start = CASE WHEN p_set_window THEN p_window_start ELSE window_start END,
        summary_json = CASE WHEN p_set_window THEN p_summary_json ELSE summary_json END,
        version = v_version + 1
     WHERE id = v_id
    RETURNING message_count INTO v_count;
    INSERT INTO messages (conversation_id, seq, role, body, created_at, interrupted, usage_json, ledger_json)
    SELECT v_id, v_count - v_added + b.ord::INTEGER - 1, b.role, b.body, p_at,
           b.ord = v_added AND p_interrupted, CASE WHEN b.ord = v_added THEN p_usage_json END,
           CASE WHEN b.ord = v_added THEN p_ledger_json END
      FROM unnest(p_roles, p_bodies) WITH ORDINALITY AS b (role, body, ord);
    IF p_reply_key IS NOT NULL THEN
        DELETE FROM idempotent_replies WHERE conversation_id = v_id AND created_at < p_reply_expires;
        INSERT INTO idempotent_replies (conversation_id, key, request_hash, created_at, body)
        VALUES (v_id, p_reply_key, p_reply_hash, p_at, p_reply_body)
        ON CONFLICT (conversation_id, key) DO UPDATE
            SET request_hash = excluded.request_hash, created_at = excluded.created_at, body = excluded.body;
    END IF;
    IF p_response_id IS NOT NULL THEN
        INSERT INTO responses (id, conversation_id, first_seq, reply_seq, created_at, request_json)
        VALUES (p_response_id, v_id, v_count - v_added, v_count - 1, p_response_created, p_response_request);
    END IF;
    o_conversation := v_id;
    o_version := v_version + 1;
END
$$
"""


async def p001_schema(conn: asyncpg.Connection) -> None:
    await conn.execute(_TABLES)
    await conn.execute(_RECOUNT_FUNCTION)
    await conn.execute(_CUT_FUNCTION)
    await conn.execute(_RECORD_TURN_FUNCTION)


async def p002_message_ledger(conn: asyncpg.Connection) -> None:
    # What the gateway alone knows of a turn's request (its model, cache mode, the history the window left
    # unsent), JSON on the reply row; NULL on every other row and on replies recorded before this migration.
    await conn.execute("ALTER TABLE messages ADD COLUMN ledger_json TEXT")
    await conn.execute(_RECORD_TURN_FUNCTION_P002)
    await conn.execute(_OLD_RECORD_TURN_WRAPPER)


# Applied in this order on a new database, and on an existing one each missing step in this order (recorded by
# name: the order of steps already applied does not matter); p003 is in ``search``, with its queries.
MIGRATIONS: tuple[Migration, ...] = (p001_schema, p002_message_ledger, *COORDINATION_MIGRATIONS, p003_message_search)

_RECORDS = "CREATE TABLE IF NOT EXISTS schema_migrations (name TEXT PRIMARY KEY, applied_at DOUBLE PRECISION NOT NULL)"


async def migrate(conn: asyncpg.Connection) -> list[str]:
    """Apply pending migrations in order, each in its own transaction under the migration lock; return the names
    applied now.  A database already up to date costs one short transaction."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
        await conn.execute(_RECORDS)  # under the lock: two first starts would race on CREATE TABLE IF NOT EXISTS
        applied = {row["name"] for row in await conn.fetch("SELECT name FROM schema_migrations")}
    applied_now: list[str] = []
    for step in MIGRATIONS:
        if step.__name__ in applied:
            continue
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
            if await conn.fetchval("SELECT 1 FROM schema_migrations WHERE name = $1", step.__name__) is None:
                await step(conn)
                await conn.execute(
                    "INSERT INTO schema_migrations (name, applied_at) VALUES ($1, $2)", step.__name__, time.time()
                )
                applied_now.append(step.__name__)
    return applied_now
