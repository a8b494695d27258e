"""Scrubbing the secrets the gateway holds (today: its upstream key) out of text that came from the upstream.

Pure code, no I/O.  An upstream may quote the key it was sent, in an error body or an ``error`` event of a stream
("Incorrect API key provided: sk-..."), and whatever the upstream says reaches the client and may reach the log.
``gateway.upstream.replies`` runs every upstream body through a ``Scrubber`` on its way in, so nothing downstream
has to remember to.

A secret is replaced by as many ``*`` as it has bytes: a body keeps its length, so a ``Content-Length`` the
upstream sent stays true and nothing needs buffering.  ``StreamScrubber`` finds a secret split across two chunks
by holding back the end of a chunk while it could be the start of a secret; a chunk that ends like an SSE event
(a blank line) never is, so streams are not delayed.  Only the secrets given are scrubbed, never anything that
merely looks like a key: model output may legitimately hold ``sk-`` strings.

A compressed body has to be decoded to be scrubbed: ``content_codings``, ``decode_body`` and ``stream_decoder``
undo gzip and deflate (the codings HTTP servers send in practice); anything else cannot be inspected.
"""

from __future__ import annotations

import functools
import json
import zlib
from collections.abc import Iterable

# Shorter "secrets" are not scrubbed: masking every "abc" in every reply would garble it, and a key that short
# protects nothing anyway.
MIN_SECRET_CHARS = 8
_MASK = b"*"
# Content codings that can be undone to scrub a body, as zlib window-bits arguments.
_ZLIB_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
MAX_DECODED_BYTES = 16 * 1024 * 1024  # a body decoding to more is not inspected (a decompression bomb, say)


class Scrubber:
    """Masks every occurrence of the given secrets (and their JSON-escaped forms) in bytes or text."""

    __slots__ = ("_secrets",)

    def __init__(self, secrets: Iterable[str]) -> None:
        variants: set[bytes] = set()
        for secret in secrets:
            secret = secret.strip()
            if len(secret) < MIN_SECRET_CHARS:
                continue
            variants.add(secret.encode())
            # As a JSON string would quote it ("/" may come back as "\/", non-ASCII as "\uXXXX").
            variants.add(json.dumps(secret)[1:-1].encode())
            variants.add(secret.replace("/", "\\/").encode())
        # Longest first, so that a secret containing another is masked whole.
        self._secrets = tuple(sorted(variants, key=len, reverse=True))

    def __bool__(self) -> bool:
        """Whether there is anything to scrub (callers skip the work when not)."""
        return bool(self._secrets)

    def scrub(self, data: bytes) -> bytes:
        for secret in self._secrets:
            if secret in data:
                data = data.replace(secret, _MASK * len(secret))
        return data

    def scrub_text(self, text: str) -> str:
        return self.scrub(text.encode()).decode() if self._secrets else text

    def stream(self) -> StreamScrubber:
        """A scrubber for one body arriving in chunks."""
        return StreamScrubber(self)

    def partial_suffix(self, data: bytes) -> int:
        """The length of the longest end of ``data`` that is the beginning of a secret (0: none)."""
        longest = 0
        for secret in self._secrets:
            first = secret[:1]
            at = data.find(first, max(0, len(data) - len(secret) + 1))
            while at != -1:
                if secret.startswith(data[at:]):
                    longest = max(longest, len(data) - at)
                    break
                at = data.find(first, at + 1)
        return longest


class StreamScrubber:
    """Scrubs a body chunk by chunk; ``flush`` gives back what was held at the end."""

    __slots__ = ("_held", "_scrubber")

    def __init__(self, scrubber: Scrubber) -> None:
        self._scrubber = scrubber
        self._held = b""

    def feed(self, data: bytes) -> bytes:
        """The part of ``held + data`` that can go on now, scrubbed."""
        data = self._scrubber.scrub(self._held + data if self._held else data)
        keep = self._scrubber.partial_suffix(data)
        if not keep:
            self._held = b""
            return data
        self._held = data[-keep:]
        return data[:-keep]

    def flush(self) -> bytes:
        """What was held back at the end of the body: the start of a secret that never came, so no secret."""
        held, self._held = self._held, b""
        return held


NO_SECRETS = Scrubber(())


@functools.lru_cache(maxsize=8)
def scrubber_for(*secrets: str) -> Scrubber:
    """The scrubber of a set of secrets, built once (it is asked for on every upstream response)."""
    return Scrubber(secrets)


def content_codings(header: str) -> list[str]:
    """The codings of a ``Content-Encoding`` header, in the order they were applied (identity left out)."""
    codings = (coding.strip().lower() for coding in header.split(","))
    return [coding for coding in codings if coding and coding != "identity"]


def decode_body(raw: bytes, codings: list[str]) -> bytes | None:
    """A whole body with its codings undone; None when one cannot be, or it decodes to too much."""
    for coding in reversed(codings):
        if coding not in _ZLIB_WBITS:
            return None
        decoder = zlib.decompressobj(_ZLIB_WBITS[coding])
        try:
            raw = decoder.decompress(raw, MAX_DECODED_BYTES)
        except zlib.error:
            return None
        if decoder.unconsumed_tail:
            return None
    return raw


def stream_decoder(codings: list[str]) -> zlib._Decompress | None:
    """An incremental decoder for a body in one coding (``decompress`` each chunk, ``flush`` at the end), or None
    when there is no such decoder."""
    if len(codings) != 1 or codings[0] not in _ZLIB_WBITS:
        return None
    return zlib.decompressobj(_ZLIB_WBITS[codings[0]])
