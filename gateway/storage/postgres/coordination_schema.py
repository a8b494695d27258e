"""The tables and functions of cross-process coordination on PostgreSQL: request limits shared by every process,
and the advisory-lock key spaces that the locks (``locks``) and the limits (``limits``) use.

Migrations here follow the store's first two (``migrations.MIGRATIONS = (p001_schema, p002_message_ledger,
*COORDINATION_MIGRATIONS, p003_message_search)``) and run the same way: each once, in its own transaction, recorded
by name.  Never edit one that has shipped; append another.

Data model:

- ``limit_starts (key, started_at)``: the exact sliding log of request starts per limit key, pruned to the last
  60 seconds; ``limit_slots (id, key, process, started_at)``: one row per request in flight under a concurrency
  limit, owned by a gateway process's number.  Both are UNLOGGED: they are counters of the moment, not data, so
  admitting a request writes no WAL and waits for no flush (with ``synchronous_commit`` on, a logged insert would
  cost an fsync on every request); a server crash empties them, which is right, since every process's slots die
  with their connections then.
- A gateway process is alive while it holds the session advisory lock ``(PROCESS_NAMESPACE, its number)`` on its
  listening connection (``locks``); numbers come from ``gateway_process_numbers``.  ``gateway_live_processes``
  lists the numbers whose lock is held (from ``pg_locks``), so a slot of a process that was killed stops counting
  as soon as PostgreSQL has closed its connections -- no heartbeat, no expiry to wait for.
- A slot's id is a random UUID rather than a sequence's next number: an unlogged table's sequence restarts when
  a crash empties the table, and a process releasing a slot admitted before the crash would then delete another
  request's slot of the same number.
- Advisory lock keys: a conversation's lock is the one-``bigint`` form (``pg_locks.objsubid`` 1); everything
  else uses the two-``int4`` form (objsubid 2) with one of the namespaces below as its first half, so the key
  spaces never meet, whatever a conversation's hash.
"""

from __future__ import annotations

import asyncpg

# These numbers are part of the schema (the functions below hold them): never change them.
PROCESS_NAMESPACE = 0x47570001  # (namespace, process number): held while the process lives
EXCLUSIVE_NAMESPACE = 0x47570002  # (namespace, hash of a name): Storage.exclusive(name)
LIMIT_NAMESPACE = 0x47570003  # (namespace, hashtext(key)): transaction lock serialising one key's admissions
WINDOW_SECONDS = 60  # the sliding window of ``requests_per_minute``


async def c001_shared_limits(conn: asyncpg.Connection) -> None:
    # Formatted only with the constants above (no input reaches this text); one execute runs every statement.
    await conn.execute(
        f"""
        CREATE SEQUENCE gateway_process_numbers AS INTEGER CYCLE;

        CREATE UNLOGGED TABLE limit_starts (
            key        TEXT NOT NULL,
            started_at DOUBLE PRECISION NOT NULL
        );
        CREATE INDEX limit_starts_by_key ON limit_starts (key, started_at);

        CREATE UNLOGGED TABLE limit_slots (
            id         UUID PRIMARY KEY DEFAULT gen_random_uuid(),
            key        TEXT NOT NULL,
            process    INTEGER NOT NULL,
            started_at DOUBLE PRECISION NOT NULL
        );
        CREATE INDEX limit_slots_by_key ON limit_slots (key);
        CREATE INDEX limit_slots_by_process ON limit_slots (process);

        -- Advisory locks are per database: another deployment on the same server has its own processes.
        CREATE VIEW gateway_live_processes AS
            SELECT objid::bigint::integer AS process
            FROM pg_locks
            WHERE locktype = 'advisory' AND granted AND objsubid = 2 AND classid = {PROCESS_NAMESPACE}
              AND database = (SELECT oid FROM pg_database WHERE datname = current_database());

        -- Take a process number and hold its liveness lock on the calling session: ``wanted`` again after a
        -- reconnect (the slots admitted under it stay this process's), else a fresh one from the sequence.
        CREATE FUNCTION gateway_claim_process(wanted INTEGER) RETURNS INTEGER LANGUAGE plpgsql AS $$
        DECLARE
            number INTEGER := wanted;
        BEGIN
            IF number IS NOT NULL AND pg_try_advisory_lock({PROCESS_NAMESPACE}, number) THEN
                RETURN number;
            END IF;
            LOOP
                number := nextval('gateway_process_numbers');
                IF pg_try_advisory_lock({PROCESS_NAMESPACE}, number) THEN
                    -- Slots under this number are a dead process's, from before the sequence wrapped.
                    DELETE FROM limit_slots WHERE process = number;
                    RETURN number;
                END IF;
            END LOOP;
        END $$;

        -- Decide and count one request start for ``p_key`` (0: no limit of that kind), as the in-process limiter
        -- does: concurrency first, then the rate; a refused request counts nowhere.  The transaction lock on the
        -- key makes the decision and the count one step across every process.  The time is the server's, so
        -- replicas with skewed clocks share one window.
        CREATE FUNCTION gateway_admit(
            p_key TEXT, p_concurrent INTEGER, p_per_minute INTEGER, p_process INTEGER,
            OUT refused TEXT, OUT retry_after DOUBLE PRECISION, OUT slot UUID
        ) LANGUAGE plpgsql AS $$
        DECLARE
            now_at DOUBLE PRECISION := extract(epoch FROM clock_timestamp());
            in_flight INTEGER;
            gone INTEGER;
            started INTEGER;
            oldest DOUBLE PRECISION;
        BEGIN
            retry_after := 0;
            PERFORM pg_advisory_xact_lock({LIMIT_NAMESPACE}, hashtext(p_key));
            IF p_concurrent > 0 THEN
                SELECT count(*) INTO in_flight FROM limit_slots WHERE key = p_key;
                IF in_flight >= p_concurrent THEN
                    -- Only at the limit is it worth reading pg_locks: drop the slots of processes that died (the
                    -- caller's own are alive: when they are all its own, pg_locks is not read at all).
                    DELETE FROM limit_slots
                    WHERE key = p_key AND process <> p_process
                      AND process NOT IN (SELECT process FROM gateway_live_processes);
                    GET DIAGNOSTICS gone = ROW_COUNT;
                    IF in_flight - gone >= p_concurrent THEN
                        refused := 'concurrency_limit_exceeded';
                        retry_after := 1;
                        RETURN;
                    END IF;
                END IF;
            END IF;
            IF p_per_minute > 0 THEN
                DELETE FROM limit_starts WHERE key = p_key AND started_at <= now_at - {WINDOW_SECONDS};
                SELECT count(*), min(started_at) INTO started, oldest FROM limit_starts WHERE key = p_key;
                IF started >= p_per_minute THEN
                    refused := 'rate_limit_exceeded';
                    retry_after := oldest + {WINDOW_SECONDS} - now_at;
                    RETURN;
                END IF;
                INSERT INTO limit_starts (key, started_at) VALUES (p_key, now_at);
            END IF;
            IF p_concurrent > 0 THEN
                INSERT INTO limit_slots (key, process, started_at) VALUES (p_key, p_process, now_at)
                RETURNING id INTO slot;
            END IF;
        END $$;

        -- Housekeeping for keys no longer asked about (an admission prunes only its own key): starts older than
        -- the window, slots of dead processes.
        CREATE FUNCTION gateway_sweep_limits() RETURNS VOID LANGUAGE sql AS $$
            DELETE FROM limit_starts
            WHERE started_at <= extract(epoch FROM clock_timestamp()) - {WINDOW_SECONDS};
            DELETE FROM limit_slots WHERE process NOT IN (SELECT process FROM gateway_live_processes);
        $$;
        """  # noqa: S608 - formatted only with the constants above
    )


COORDINATION_MIGRATIONS = (c001_shared_limits,)
