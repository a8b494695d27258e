"""Which HTTP headers cross the gateway on the way to the upstream and back (pure policy, no I/O).

A chat completion is the gateway's own request: it sends only what it chose, plus the client's ``X-DashScope-*``
switches, and hands back only headers worth a client's while (request ids, rate-limit hints).  A pass-through
request is the client's: every end-to-end header goes, either way, except the ones below.
"""

from __future__ import annotations

from collections.abc import Iterable

# Response headers worth passing back to the client: request ids for support tickets, rate-limit hints.
PASS_BACK_EXACT = frozenset({"x-request-id", "request-id", "retry-after", "retry-after-ms", "req-cost-time"})
PASS_BACK_PREFIXES = ("x-ratelimit-", "x-dashscope-", "openai-")
# Request headers that select upstream behaviour (DashScope's X-DashScope-* switches, e.g. data inspection).
FORWARD_PREFIXES = ("x-dashscope-",)
# Never relayed as they are, either way (RFC 9110 section 7.6.1): they describe one hop, or the framing, which
# aiohttp sets anew.  Credentials are replaced by the gateway's rules; X-Conversation-Id is the gateway's own.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)
# The body goes upstream as aiohttp's server decoded it, so a client's Content-Encoding would mislabel it.
NOT_FORWARDED = _HOP_BY_HOP | {"authorization", "api-key", "x-conversation-id", "content-encoding"}
# A pass-through body goes back as it came, so its Content-Length stays true.
NOT_PASSED_BACK = _HOP_BY_HOP - {"content-length"}


def end_to_end(headers: Iterable[tuple[str, str]], dropped: frozenset[str]) -> dict[str, str]:
    return {name: value for name, value in headers if name.lower() not in dropped}
