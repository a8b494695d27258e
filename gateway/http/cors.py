"""CORS for browser clients, off unless ``server.cors_origins`` names origins (or ``"*"``).

A preflight (``OPTIONS`` with ``Origin`` and ``Access-Control-Request-Method``) from an allowed origin is answered
here with 204, before access control: browsers send no credentials on a preflight.  Every other response to an
allowed origin, errors included, carries ``Access-Control-Allow-Origin`` and exposes the gateway's headers, so a
page can read ``X-Conversation-Id`` and friends.  Requested headers are allowed as asked (the origin is trusted;
the official SDKs send ``x-stainless-*`` headers), on top of the ones the gateway itself reads.  Cookies are never
used, so credentials mode is not offered.  Pure: no I/O, no web framework types.
"""

from __future__ import annotations

from collections.abc import Sequence

ALLOWED_HEADERS = ("Authorization", "Content-Type", "X-Conversation-Id", "api-key", "X-DashScope-SSE")
EXPOSED_HEADERS = (
    "X-Conversation-Id",
    "X-Conversation-Trimmed",
    "X-Conversation-Replaced",
    "X-Gateway-Request-Id",
    "X-Request-Id",
    "Retry-After",
)
ALLOWED_METHODS = "GET, POST, PUT, PATCH, DELETE, OPTIONS"
MAX_AGE_SECONDS = 600


class CorsPolicy:
    def __init__(self, origins: Sequence[str]) -> None:
        self._any = "*" in origins
        self._origins = frozenset(o.lower() for o in origins)
        self.enabled = bool(origins)

    def allow_origin(self, origin: str | None) -> str | None:
        """The ``Access-Control-Allow-Origin`` value for a request from ``origin``, or None when not allowed."""
        if not self.enabled or not origin:
            return None
        if self._any:
            return "*"
        return origin if origin.lower() in self._origins else None

    def preflight(self, origin: str, requested_headers: str | None) -> dict[str, str]:
        """Headers of a 204 answer to an allowed origin's preflight."""
        allow_origin = self.allow_origin(origin)
        assert allow_origin is not None
        requested = [h.strip() for h in (requested_headers or "").split(",") if h.strip()]
        known = {h.lower() for h in ALLOWED_HEADERS}
        headers = [*ALLOWED_HEADERS, *(h for h in requested if h.lower() not in known)]
        return {
            "Access-Control-Allow-Origin": allow_origin,
            "Access-Control-Allow-Methods": ALLOWED_METHODS,
            "Access-Control-Allow-Headers": ", ".join(headers),
            "Access-Control-Max-Age": str(MAX_AGE_SECONDS),
            **self._vary(allow_origin),
        }

    def response_headers(self, origin: str | None) -> dict[str, str]:
        """Headers every other response to ``origin`` carries (none when it is not allowed)."""
        allow_origin = self.allow_origin(origin)
        if allow_origin is None:
            return {}
        return {
            "Access-Control-Allow-Origin": allow_origin,
            "Access-Control-Expose-Headers": ", ".join(EXPOSED_HEADERS),
            **self._vary(allow_origin),
        }

    @staticmethod
    def _vary(allow_origin: str) -> dict[str, str]:
        # A listed origin is echoed, so caches must key on Origin; "*" is the same for everyone.
        return {} if allow_origin == "*" else {"Vary": "Origin"}
