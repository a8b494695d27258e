"""Error types: each carries its HTTP status and OpenAI error ``type``; middleware renders them once.

The wire shape is OpenAI's: ``{"error": {"message", "type", "param", "code"}}``.  ``UpstreamHTTPError`` keeps the
upstream's own body when that body is already OpenAI-shaped, so DashScope's codes reach the client unchanged.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar


class GatewayError(Exception):
    """Base of every error the gateway answers on purpose."""

    status: ClassVar[int] = 500
    type: ClassVar[str] = "server_error"

    def __init__(self, message: str, *, code: str | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.param = param

    @property
    def http_status(self) -> int:
        return self.status

    def body(self) -> bytes:
        """The JSON body sent to the client."""
        return error_body(self.message, self.type, self.code, self.param)


class InvalidRequest(GatewayError):
    status = 400
    type = "invalid_request_error"


class PayloadTooLarge(GatewayError):
    status = 413
    type = "invalid_request_error"


class RequestTimeout(GatewayError):
    """The client did not send its whole request in time (``server.body_timeout_seconds``)."""

    status = 408
    type = "invalid_request_error"


class AuthenticationFailed(GatewayError):
    status = 401
    type = "invalid_request_error"  # as OpenAI answers a bad key


class PermissionDenied(GatewayError):
    status = 403
    type = "permission_error"


class RateLimited(GatewayError):
    status = 429
    type = "rate_limit_error"

    def __init__(self, message: str, *, code: str, retry_after: int) -> None:
        super().__init__(message, code=code)
        self.headers = {"Retry-After": str(retry_after)}


class HeadersTooLarge(GatewayError):
    status = 431
    type = "invalid_request_error"


class NotFound(GatewayError):
    status = 404
    type = "not_found_error"


class Conflict(GatewayError):
    """The request would create something that already exists."""

    status = 409
    type = "invalid_request_error"


class HistoryMismatch(GatewayError):
    """A resent transcript differs from the stored conversation before its last turn (see gateway.core.history)."""

    status = 409
    type = "invalid_request_error"


class Overloaded(GatewayError):
    """Too many requests in flight: refused at once rather than queued."""

    status = 503
    type = "server_error"

    def __init__(self, message: str, *, code: str, retry_after: int = 1) -> None:
        super().__init__(message, code=code)
        self.headers = {"Retry-After": str(retry_after)}


class StorageUnavailable(GatewayError):
    """The database could not be read or written (locked past the busy timeout, disk full, ...)."""

    status = 503
    type = "server_error"


class UpstreamError(GatewayError):
    """Base of every failure of the upstream call (counted in metrics by class)."""

    status = 502
    type = "upstream_error"


class UpstreamUnavailable(UpstreamError):
    """The upstream could not be reached or broke the connection before answering."""

    status = 502
    type = "upstream_error"


class UpstreamTimeout(UpstreamError):
    status = 504
    type = "timeout_error"


class UpstreamInvalidResponse(UpstreamError):
    """The upstream answered 2xx with something that is not a chat completion."""

    status = 502
    type = "upstream_error"


class UpstreamAuthFailed(UpstreamError):
    """The upstream refused the gateway's own key.  Its error body is not passed on: it may quote the key."""

    status = 502
    type = "upstream_error"


class UpstreamHTTPError(UpstreamError):
    """The upstream answered with an error status; the client gets that status and an OpenAI-shaped body."""

    type = "upstream_error"

    def __init__(self, status: int, raw_body: bytes, headers: dict[str, str]) -> None:
        self.upstream_status = status
        self.raw_body = raw_body
        self.headers = headers
        parsed = _openai_error(raw_body)
        message = parsed["message"] if parsed else f"upstream answered HTTP {status}"
        super().__init__(message, code=parsed.get("code") if parsed else f"upstream_http_{status}")

    @property
    def http_status(self) -> int:
        return self.upstream_status

    def body(self) -> bytes:
        if _openai_error(self.raw_body):
            return self.raw_body
        return error_body(self.message, self.type, self.code, None)


def _openai_error(raw: bytes) -> dict[str, Any] | None:
    """The ``error`` object of an OpenAI-shaped error body, or None when the body is not one."""
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return error
    return None


def error_body(message: str, type_: str, code: str | None = None, param: str | None = None) -> bytes:
    return json.dumps({"error": {"message": message, "type": type_, "param": param, "code": code}}).encode()
