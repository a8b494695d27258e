"""The message search index of the PostgreSQL backend: its schema (migration p003, listed in ``migrations``) and
the term conditions of ``PostgresCatalog.search_conversations`` that use it.

Data model: no table of its own.  ``gateway_message_text(body)`` computes a message's *searchable text* from its
JSON (the SQLite backend's, see ``storage.sqlite.search``: the text content, a string or the ``text`` of every
part that has one, joined by a space, then each tool call's function name and arguments; never
``reasoning_content``), and a GIN index of ``pg_trgm`` trigrams on its lower-cased value serves ``LIKE`` with a
pattern holding 3 characters or more.  PostgreSQL maintains the index with every write of ``messages``, whichever
path and whichever release writes it, in the writing transaction.  Measured (turns through the storage's
``append_turn``, a user message of 200 characters of English prose each, median wall time per turn against a local
server, 2-CPU test machine, PostgreSQL 15): with a 200-character reply 520 us against 359 us without the index, with
a 2,000-character reply 973 us against 463 us.

A query's terms: each a ``LIKE '%term%'`` on the lower-cased text (``lower`` folds every letter the database's
ctype knows, so all of Unicode under a UTF-8 locale).  A term shorter than 3 characters yields no trigram, and a
GIN scan for it would read the whole index: its condition is written so that the index cannot serve it (the
expression differs from the index's), and it is checked against the messages of the conversations in scope.
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

# IMMUTABLE (it reads nothing but its argument), so that it can be indexed.  PL/pgSQL rather than SQL: an index
# expression is set up anew for every statement that writes the table, and a SQL function's body is then planned
# anew each time (measured: 408 us per one-row INSERT, against 62 us for this one and 51 us for an index on the raw
# body; 9 us without an index).  jsonb refuses an escaped NUL (\u0000, which TEXT keeps as written), and an error
# here would fail the write: escaped NULs go first, an escaped backslash ("\\") matched as a whole so that a
# "u0000" after it stays.  Parts and tool calls are visited in order, a string taken where a string belongs,
# anything else skipped (array_to_string skips the NULLs of a call without a name or arguments).
_MESSAGE_TEXT_FUNCTION = r"""
CREATE FUNCTION gateway_message_text(body TEXT) RETURNS TEXT
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
DECLARE
    m jsonb := (CASE WHEN strpos(body, '\u0000') > 0 THEN regexp_replace(body, '(\\\\)|\\u0000', '\1', 'g')
                     ELSE body END)::jsonb;
    parts text[] := '{}';
    item jsonb;
BEGIN
    CASE jsonb_typeof(m -> 'content')
        WHEN 'string' THEN
            parts := parts || (m ->> 'content');
        WHEN 'array' THEN
            FOR item IN SELECT jsonb_array_elements(m -> 'content') LOOP
                IF jsonb_typeof(item -> 'text') = 'string' THEN
                    parts := parts || (item ->> 'text');
                END IF;
            END LOOP;
        ELSE
    END CASE;
    IF jsonb_typeof(m -> 'tool_calls') = 'array' THEN
        FOR item IN SELECT jsonb_array_elements(m -> 'tool_calls') LOOP
            parts := parts || (item #>> '{function,name}') || (item #>> '{function,arguments}');
        END LOOP;
    END IF;
    RETURN array_to_string(parts, ' ');
END
$$
"""


async def p003_message_search(conn: asyncpg.Connection) -> None:
    # pg_trgm is a trusted extension (PostgreSQL 13 on): the database's owner may create it, no superuser needed.
    # The index is built in the migration's transaction, which holds writes to messages back meanwhile (a
    # CONCURRENTLY build cannot run inside one): a large database's first start on this release waits for it.
    await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
    await conn.execute(_MESSAGE_TEXT_FUNCTION)
    await conn.execute(
        "CREATE INDEX messages_search ON messages USING gin (lower(gateway_message_text(body)) gin_trgm_ops)"
    )


# --- the query -----------------------------------------------------------------------------------------------

INDEXED_CHARACTERS = 3  # a term this long or longer holds a trigram
_TEXT = "lower(gateway_message_text(m.body))"  # the index's expression, for messages ``m``
# A short term's: the same text, in an expression the index does not have (see the module docstring).
_SCANNED_TEXT = "(lower(gateway_message_text(m.body)) || '')"
# One term's condition on a conversation ``c``: some message of it holds the pattern $n (backslash, LIKE's
# default escape character, escapes % and _ in it).
_TERM = "EXISTS (SELECT 1 FROM messages AS m WHERE m.conversation_id = c.id AND {text} LIKE lower(${n}::text))"
_ANY_TERM = "{text} LIKE lower(${n}::text)"


def term_conditions(first: int, indexed: int, short: int) -> tuple[str, str]:
    """For ``indexed`` terms then ``short`` ones, parameters $first, $first+1, ... (``term_patterns``' order):
    the condition a conversation ``c`` meets when it holds every term, and the one a message ``m`` meets when it
    holds any.  Composed from constants only."""
    texts = [_TEXT] * indexed + [_SCANNED_TEXT] * short
    every = [_TERM.format(text=text, n=first + i) for i, text in enumerate(texts)]
    anyone = [_ANY_TERM.format(text=text, n=first + i) for i, text in enumerate(texts)]
    return " AND ".join(every) or "true", " OR ".join(anyone) or "false"


def term_patterns(terms: Sequence[str]) -> tuple[int, int, list[str]]:
    """The numbers of indexed and short terms, and their LIKE patterns: the indexed ones first, longest (likely
    the most selective) first, then the short ones."""
    indexed = sorted({t for t in terms if len(t) >= INDEXED_CHARACTERS}, key=lambda t: (-len(t), t))
    short = sorted({t for t in terms if len(t) < INDEXED_CHARACTERS})
    return len(indexed), len(short), [_like_pattern(t) for t in (*indexed, *short)]


def _like_pattern(term: str) -> str:
    escaped = term.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"
