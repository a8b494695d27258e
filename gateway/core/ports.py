"""Ports: what the use cases need from the outside world, as Protocols, and the records they exchange.

``storage`` and ``upstream`` implement these; ``app`` hands the concrete classes in.  Nothing here does I/O or
knows a backend: a second storage backend or another upstream dialect implements the same Protocols.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Protocol

# --- the upstream -------------------------------------------------------------------------------------------


class UpstreamReply(Protocol):
    """An open upstream response: status and headers are known; the body is read whole or streamed, always
    OpenAI-shaped (whatever dialect the upstream speaks) and scrubbed of the gateway's secrets."""

    status: int
    content_type: str
    headers: dict[str, str]

    @property
    def is_event_stream(self) -> bool: ...

    def abort(self) -> None:
        """Drop the connection now, so the upstream stops generating (and billing) tokens nobody will read."""

    async def read(self) -> bytes: ...

    def chunks(self) -> AsyncIterator[bytes]:
        """Body bytes as they arrive; a cut or stalled stream raises a ``GatewayError``."""
        ...


class Upstream(Protocol):
    """The model API.  Each call is an ``async with`` block that gets the reply once its headers arrived; leaving
    the block early closes the connection."""

    def chat_completions(
        self, body: bytes, *, client_authorization: str | None, client_headers: Mapping[str, str]
    ) -> AbstractAsyncContextManager[UpstreamReply]:
        """A chat completion (an OpenAI-shaped request body)."""
        ...

    def forward(
        self,
        method: str,
        path: str,
        query: str,
        body: bytes,
        *,
        native: bool,
        client_authorization: str | None,
        client_headers: Mapping[str, str],
    ) -> AbstractAsyncContextManager[UpstreamReply]:
        """Any other request, to the same path under the upstream's base URL (``native``: DashScope's native one),
        its body and headers as they came."""
        ...

    def check_credentials(self, status: int) -> None:
        """Raise when ``status`` says the upstream rejected the gateway's own key (an operator problem)."""
