"""The message search index of the SQLite backend: its schema (migration m012, listed in ``migrations``) and the
SQL of ``SqliteCatalog.search_conversations`` that reads it.

Data model: ``message_search``, an FTS5 table with the trigram tokenizer (case-insensitive), one row per message
(its rowid the message's row id) holding the message's *searchable text*: its text content (a string content, or
the ``text`` of every part of an array content that has one, joined by a space) and, for an assistant message
with tool calls, each call's function name and arguments; never ``reasoning_content``.  Triggers on ``messages``
keep it in step, inside the transaction of every write: the inserts of the turn trigger (``turn_writes``), of
imports, forks and appended items; deletes by a rewind, an edit or a replacing turn, and those of a deleted
conversation's cascade (SQLite fires row triggers for the rows a foreign key's ON DELETE CASCADE deletes, whatever
``recursive_triggers`` says); an update of a body (no path does one today, but a migration might).  The table
keeps its own copy of the text (not contentless): ``LIKE`` and the results read it.

The price is paid by every write, on the connection that makes it: for turns the inline one, on the event loop.
Measured (turns through ``ConversationStore.append_turn`` into 200 conversations, a user message of 200 characters
of English prose each, CPU time per turn, 2-CPU test machine, SQLite 3.40): with a 200-character reply 395 us
against 74 us without these triggers; with a 2,000-character reply 1,024 us against 110 us; a 1 MB reply stalls
the loop 125 ms against 25 ms.  That is ~190 us a turn plus ~0.35 us a character indexed (~1 us for Chinese,
whose trigrams are nearly all distinct), nearly all of it FTS5 tokenizing and writing its segments, not the JSON
(7 us a message); the file grows ~3.5 times (29 MB against 8.4 MB).

A query's terms (``core.search``): one of 3 characters or more is looked up in the index by ``MATCH``, as one
FTS5 string (a phrase of its trigrams, so any substring matches); a shorter one cannot be, a trigram being three
characters, and is compared by ``LIKE`` with the stored text of the candidate conversations' messages.  SQLite's
``LIKE`` folds ASCII letters only, where the trigram tokenizer folds all of Unicode: a short term in another
script matches its own case only.  Whether the index is read first or the owner's conversations are walked
depends on how common the terms are: see "the query" below.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import aiosqlite

# The searchable text of the message JSON ``{json}``, as SQL.  Parts and tool calls are visited in their order
# (json_each's key) and joined by single spaces; anything not a string where a string belongs, a part that is not
# an object, a tool call without a function, gives nothing rather than an error (an error here would fail the
# write).
_MESSAGE_TEXT = """coalesce((
SELECT group_concat(part, ' ') FROM (
    SELECT json_extract({json}, '$.content') AS part WHERE json_type({json}, '$.content') = 'text'
    UNION ALL
    SELECT * FROM (
        SELECT CASE WHEN p.type = 'object' THEN
                    CASE WHEN json_type(p.value, '$.text') = 'text' THEN json_extract(p.value, '$.text') END
               END
          FROM json_each({json}, '$.content') AS p
         WHERE json_type({json}, '$.content') = 'array' ORDER BY p.key)
    UNION ALL
    SELECT * FROM (
        SELECT CASE WHEN c.type = 'object' THEN json_extract(c.value, f.path) END
          FROM json_each({json}, '$.tool_calls') AS c,
               (SELECT 0 AS field, '$.function.name' AS path UNION ALL SELECT 1, '$.function.arguments') AS f
         WHERE json_type({json}, '$.tool_calls') = 'array' ORDER BY c.key, f.field)
)), '')"""

# SQLite's JSON functions end a string at an escaped NUL (\u0000), which would hide the rest of it (PostgreSQL's
# function drops them too): the body without them, for a body that has any.  An escaped backslash ("\\") is set
# aside first (as char(1), which valid JSON never holds raw), so that a "u0000" after one stays.
_WITHOUT_NUL = r"""(CASE WHEN instr({body}, '\u0000') = 0 THEN {body}
      ELSE replace(replace(replace({body}, '\\', char(1)), '\u0000', ''), char(1), '\\') END)"""


def _message_text(body: str) -> str:
    """SQL of the searchable text of the message JSON in the column or expression ``body``."""
    return _MESSAGE_TEXT.format(json=_WITHOUT_NUL.format(body=body))


async def m012_message_search(db: aiosqlite.Connection) -> None:
    # columnsize=0: no per-row size table (it serves only bm25 ranking, which search does not use), one write less
    # per message.  detail stays full: a term longer than 3 characters is a phrase of trigrams, which needs it.
    await db.execute(
        "CREATE VIRTUAL TABLE message_search USING fts5(text, tokenize = 'trigram case_sensitive 0', columnsize = 0)"
    )
    await db.execute(
        f"""
        CREATE TRIGGER message_search_insert AFTER INSERT ON messages
        BEGIN
            INSERT INTO message_search (rowid, text) VALUES (NEW.id, {_message_text("NEW.body")});
        END
        """  # noqa: S608 (constants only)
    )
    await db.execute(
        """
        CREATE TRIGGER message_search_delete AFTER DELETE ON messages
        BEGIN
            DELETE FROM message_search WHERE rowid = OLD.id;
        END
        """
    )
    await db.execute(
        f"""
        CREATE TRIGGER message_search_update AFTER UPDATE OF body ON messages
        BEGIN
            DELETE FROM message_search WHERE rowid = OLD.id;
            INSERT INTO message_search (rowid, text) VALUES (NEW.id, {_message_text("NEW.body")});
        END
        """  # noqa: S608 (constants only)
    )
    await db.execute(
        f"INSERT INTO message_search (rowid, text) SELECT id, {_message_text('body')} FROM messages"  # noqa: S608
    )
    # The backfill leaves many segments (one per batch FTS5 flushes), which automerge would otherwise merge a little
    # at every later write: turns just after the upgrade paid up to ~60 ms each for it (measured, bench.search on
    # 810,000 messages).  Merged into one here, in the migration, instead.
    await db.execute("INSERT INTO message_search (message_search) VALUES ('optimize')")


# --- the query -----------------------------------------------------------------------------------------------
#
# Two shapes, chosen per query from the index itself (``probe``, one statement, ~1 ms):
#
# - *Index first*, when some term of 3 characters or more is rare (fewer than ``PROBE_CAP`` messages hold it):
#   the conversations of the messages the index finds for each rare term (an uncorrelated IN, worked out once per
#   statement), then the owner and the order.  Every other term is checked on those few conversations only.
# - *Walk*, when no term is rare: the owner's conversations in page order (newest first for "desc"), each tested
#   in turn, every term compared with its messages' stored text, until the page is full.  A common word fills a
#   page after a few dozen conversations; looked up in the index first it would have been every owner's
#   thousands of messages before the owner filter (measured, bench.search, 100,000 conversations: a small owner
#   75-110 ms for a common word, now ~1 ms; the big tenant's 2-character terms ~430 ms, now ~45-70).  Its worst case
#   is a word common elsewhere that this owner's conversations lack: every one of them is read (~0.7 s for the
#   big tenant's 50,000).
#
# A page's matching messages (up to 3 per conversation) are then found among that conversation's own messages,
# with the same per-message tests (a rare term through its small set from the index).
#
# The comparison with the stored text must agree with the index, whose trigram tokenizer folds case over all of
# Unicode (case_sensitive 0) while LIKE folds ASCII letters only.  Measured on SQLite 3.40 (every code point up to
# U+1FFFF): the only characters it folds to an ASCII letter are KELVIN SIGN (to k) and LONG S (to s), and it folds
# no character to a caseless one.  So a term of ASCII and caseless characters (digits, punctuation, Chinese) is
# compared by LIKE when it has no k or s, by GLOB with a class per letter (s, S, LONG S) when it has; a term with
# another cased letter (é, Ж) can be compared by the index only: it never walks, and on the candidates of a rare
# term it is the index's own MATCH restricted to one message's rowid (~40 us a message).  Terms shorter than 3
# characters are LIKE in both shapes (the module docstring: their non-ASCII letters match their own case only).

# A term of this many characters or more is looked up through the index.
INDEXED_CHARACTERS = 3
# A term of 3 characters or more held by fewer messages than this is rare: looking it up in the index first costs
# at most this many rows (~10 ms).  Counted up to the cap only (``probe``), so a common word costs no more.
PROBE_CAP = 2000
_PROBE_ONE = "(SELECT count(*) FROM (SELECT rowid FROM message_search WHERE message_search MATCH :p{n} LIMIT :cap))"

# How a term is tested (``plan``), in the order the statement's parameters :t0, :t1, ... come:
RARE = "rare"  # looked up in the index, whole (few messages hold it)
INDEX = "index"  # common, but only the index compares it right: per message by MATCH, or looked up whole
GLOB = "glob"  # common, compared with the stored text by GLOB (a term with k or s)
LIKE = "like"  # compared with the stored text by LIKE (short terms; common terms without k or s)
_MODES = (RARE, INDEX, GLOB, LIKE)

# One term's condition on a conversation ``c``.  Looked up: the conversations of the messages the index finds
# (an uncorrelated IN, once per statement).  Otherwise: some message of the conversation passes the term's test on
# a message ``m`` whose stored text is ``s.text``.  ``+s.text`` and the ESCAPE clause keep the comparison with
# SQLite rather than handing it to FTS5, whose trigram LIKE and GLOB (SQLite 3.40) find nothing for a pattern of
# fewer than 3 non-ASCII characters, and whose GLOB ignores case_sensitive 0.
_LOOKED_UP = """c.id IN (SELECT m.conversation_id FROM message_search AS s JOIN messages AS m ON m.id = s.rowid
              WHERE message_search MATCH :t{n})"""
_IN_SOME_MESSAGE = """EXISTS (SELECT 1 FROM messages AS m JOIN message_search AS s ON s.rowid = m.id
             WHERE m.conversation_id = c.id AND {test})"""
_MESSAGE_TESTS = {
    RARE: "m.id IN (SELECT rowid FROM message_search WHERE message_search MATCH :t{n})",
    INDEX: "EXISTS (SELECT 1 FROM message_search AS f WHERE f.message_search MATCH :t{n} AND f.rowid = m.id)",
    GLOB: "+s.text GLOB :t{n}",
    LIKE: "s.text LIKE :t{n} ESCAPE '\\'",
}
# Up to 3 matching messages of the conversation ``page``, in order, as one JSON array of [id, seq, role, text].
MATCHES = """(
SELECT json_group_array(json_array(id, seq, role, text)) FROM (
    SELECT m.id, m.seq, m.role, s.text FROM messages AS m JOIN message_search AS s ON s.rowid = m.id
     WHERE m.conversation_id = page.id AND ({condition})
     ORDER BY m.seq LIMIT 3))"""


def probe(count: int) -> str:
    """The statement counting, for each of ``count`` terms (:p0, :p1, ... as FTS5 strings), up to :cap of the
    messages holding it.  Composed from constants only."""
    return "SELECT " + ", ".join(_PROBE_ONE.format(n=n) for n in range(count))


def probe_params(terms: Sequence[str]) -> tuple[list[str], dict[str, Any]]:
    """The terms to probe (those of 3 characters or more, each once) and ``probe``'s parameters for them."""
    indexed = sorted({t for t in terms if len(t) >= INDEXED_CHARACTERS})
    params: dict[str, Any] = {f"p{n}": _fts5_string(t) for n, t in enumerate(indexed)}
    return indexed, params | {"cap": PROBE_CAP}


def plan(terms: Sequence[str], counts: dict[str, int]) -> tuple[tuple[str, ...], dict[str, Any]]:
    """How each term is tested (``_MODES``, in parameter order: rare ones rarest first) and the statement's
    parameters :t0, :t1, ...; ``counts`` is the probe's count for each term of 3 characters or more."""
    tests: list[tuple[int, int, str, str]] = []  # (mode's rank, count, term, mode) to sort by
    for term in set(terms):
        if len(term) < INDEXED_CHARACTERS:
            mode = LIKE
        elif counts[term] < PROBE_CAP:
            mode = RARE
        elif not all(_agrees_with_like(ch) for ch in term):
            mode = INDEX
        else:
            mode = GLOB if any(ch in "kKsS" for ch in term) else LIKE
        tests.append((_MODES.index(mode), counts.get(term, 0) if mode == RARE else 0, term, mode))
    tests.sort()
    params: dict[str, Any] = {}
    for n, (_, _, term, mode) in enumerate(tests):
        value = {RARE: _fts5_string, INDEX: _fts5_string, GLOB: _glob_pattern, LIKE: _like_pattern}[mode](term)
        params[f"t{n}"] = value
    return tuple(mode for _, _, _, mode in tests), params


def walks(modes: Sequence[str]) -> bool:
    """Whether a query tested so is answered by walking the owner's conversations (no term is looked up)."""
    return RARE not in modes and INDEX not in modes


def term_conditions(modes: Sequence[str]) -> tuple[str, str]:
    """For terms tested as ``modes`` say (``plan``): the condition a conversation ``c`` meets when it holds every
    term, and the one a message ``m`` (its row of the index ``s``) meets when it holds any.  An INDEX term is
    looked up whole unless a rare term narrows the candidates.  Composed from constants only."""
    every, anyone = [], []
    for n, mode in enumerate(modes):
        test = _MESSAGE_TESTS[mode].format(n=n)
        looked_up = mode == RARE or (mode == INDEX and RARE not in modes)
        every.append(_LOOKED_UP.format(n=n) if looked_up else _IN_SOME_MESSAGE.format(test=test))
        anyone.append(test)
    return " AND ".join(every) or "1", " OR ".join(anyone) or "0"


def _agrees_with_like(ch: str) -> bool:
    """Whether comparing ``ch`` by LIKE (or GLOB, see ``_glob_pattern``) agrees with the index's folding: ASCII,
    or a character with no case (U+FFFD to U+FFFF aside: SQLite reads the last two as the first)."""
    if ch.isascii():
        return True
    return ch.lower() == ch == ch.upper() and ch.casefold() == ch and not "\ufffd" <= ch <= "\uffff"


def _fts5_string(term: str) -> str:
    """``term`` as one FTS5 string: in double quotes, each of its own doubled; every character in it is text."""
    return '"' + term.replace('"', '""') + '"'


def _like_pattern(term: str) -> str:
    """A LIKE pattern (escape character backslash) matching any text that holds ``term``."""
    escaped = term.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


# The characters the index folds to an ASCII letter, beside its other case (``_agrees_with_like``).
_FOLDED_TO = {"k": "\u212a", "s": "\u017f"}


def _glob_pattern(term: str) -> str:
    """A GLOB pattern matching any text that holds ``term`` as the index folds case: each ASCII letter a class of
    the characters folded to it, GLOB's own special characters (*, ?, [) each in a class of its own."""
    out = []
    for ch in term:
        if ch.isascii() and ch.isalpha():
            out.append(f"[{ch.lower()}{ch.upper()}{_FOLDED_TO.get(ch.lower(), '')}]")
        elif ch in "*?[":
            out.append(f"[{ch}]")
        else:
            out.append(ch)
    return "*" + "".join(out) + "*"
