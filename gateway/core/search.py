"""Full-text search over stored conversations: the query's terms, and the highlighted snippets of what matched.

A query is words; a conversation matches when each occurs, case-insensitively, as a substring of one of its
messages (so the last word matches as a prefix, and Chinese, written without spaces, by any run of characters).
The storage finds the conversations (``Catalog.search_conversations``); this module turns the text of their
matching messages into short snippets with the places of every term, which a client highlights without parsing
markup.  Pure: no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from gateway.core.records import SearchHit
from gateway.errors import InvalidRequest

MAX_QUERY_CHARACTERS = 256
MAX_TERMS = 8
MAX_TERM_CHARACTERS = 64
SNIPPET_CHARACTERS = 160
_BEFORE = 48  # of the snippet, before the first match: enough to read what it is about
_ELLIPSIS = "…"
_RAW_WINDOW = 4 * SNIPPET_CHARACTERS  # of the raw text each side of the first match: whitespace runs shrink


def parse_query(q: str) -> list[str]:
    """The terms of ``q`` (400 ``invalid_query`` for an empty or oversized one)."""
    terms = q.split()
    if not terms:
        raise _invalid("'q' must hold at least one word.")
    if len(q) > MAX_QUERY_CHARACTERS or len(terms) > MAX_TERMS:
        raise _invalid(f"'q' may hold at most {MAX_TERMS} words and {MAX_QUERY_CHARACTERS} characters.")
    if any(len(term) > MAX_TERM_CHARACTERS for term in terms):
        raise _invalid(f"A word of 'q' may be at most {MAX_TERM_CHARACTERS} characters long.")
    return list(dict.fromkeys(terms))  # a repeated word asks nothing more


def can_match(terms: Sequence[str]) -> bool:
    """False when a term holds what no stored text does (a NUL, or a lone surrogate: a command line's undecodable
    bytes), so that the search finds nothing without asking the database, which would refuse such a parameter."""
    return all("\x00" not in term and _is_unicode(term) for term in terms)


def _is_unicode(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def snippet(text: str, terms: Sequence[str]) -> tuple[str, list[list[int]]]:
    """A short excerpt of ``text`` around the first term found, and the [start, end) offsets (in code points) of
    every term inside it; whitespace runs read as one space."""
    pattern = re.compile("|".join(re.escape(t) for t in sorted(terms, key=len, reverse=True)), re.IGNORECASE)
    # Only the neighbourhood of the first match is read beyond one regex search: a message may be megabytes (a
    # tool's output), and up to 300 of them make one page.
    first = pattern.search(text)
    around = first.start() if first is not None else 0
    low, high = max(0, around - _RAW_WINDOW), min(len(text), around + _RAW_WINDOW)
    flat = " ".join(text[low:high].split())
    found = pattern.search(flat)
    start = max(0, found.start() - _BEFORE) if found is not None else 0
    end = min(len(flat), start + SNIPPET_CHARACTERS)
    start = max(0, min(start, end - SNIPPET_CHARACTERS))
    lead = _ELLIPSIS if start > 0 or low > 0 else ""
    excerpt = lead + flat[start:end] + (_ELLIPSIS if end < len(flat) or high < len(text) else "")
    shift = len(lead) - start
    highlights = [[m.start() + shift, m.end() + shift] for m in pattern.finditer(flat, start, end)]
    return excerpt, highlights


def matches_object(hit: SearchHit, terms: Sequence[str], message_id_prefix: str) -> list[dict[str, Any]]:
    """The ``matches`` of one search result."""
    found = []
    for row_id, _seq, role, text in hit.messages:
        excerpt, highlights = snippet(text, terms)
        found.append({"id": f"{message_id_prefix}{row_id}", "role": role, "snippet": excerpt, "highlights": highlights})
    return found


def _invalid(message: str) -> InvalidRequest:
    return InvalidRequest(message, code="invalid_query", param="q")
