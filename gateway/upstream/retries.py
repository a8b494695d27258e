"""When an upstream failure is worth another attempt, and how long to wait first (pure policy, no I/O).

Retried: 429, 500, 502, 503 and 504, and connection failures before any response; each only before a byte has
reached the client (the upstream client retries before it hands a response on, never after).  Never retried: a
timeout waiting for headers (the model may be busy generating; a second attempt would double the wait and the
bill), and DashScope errors that cannot succeed on retry, recognised by their code whatever the status: invalid
parameters, an invalid API key, an account in arrears, content that failed data inspection.

The wait doubles per attempt from ``backoff`` with "equal jitter" (half fixed, half random), or is the upstream's
``Retry-After`` (seconds or an HTTP date; ``retry-after-ms`` too) when it gives one, capped.  No retry is made that
would end after the request's total budget.
"""

from __future__ import annotations

import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

from gateway.protocols.openai_chat import loads

RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})
_PERMANENT_CODES = frozenset(
    {
        "invalidparameter",
        "invalid_parameter_error",
        "invalidapikey",
        "invalid_api_key",
        "arrearage",
        "datainspectionfailed",
        "data_inspection_failed",
    }
)


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int
    backoff: float
    retry_after_cap: float
    budget: float

    def delay(self, attempt: int, headers: Mapping[str, str] | None) -> float:
        """Seconds to wait before attempt ``attempt + 1``."""
        told = retry_after(headers) if headers is not None else None
        if told is not None:
            return min(told, self.retry_after_cap)
        step: float = self.backoff * 2 ** (attempt - 1)
        return step / 2 + random.uniform(0, step / 2)

    def allows(self, attempt: int, wait: float, remaining: float) -> bool:
        return attempt < self.max_attempts and wait < remaining


def permanent(body: bytes) -> bool:
    """Whether an error body carries a DashScope code that no retry can fix."""
    try:
        data: Any = loads(body)
    except ValueError:
        return False
    error = data.get("error") if isinstance(data, dict) else None
    codes = [data.get("code")] if isinstance(data, dict) else []  # the native protocol's shape
    if isinstance(error, dict):
        codes += [error.get("code"), error.get("type")]
    return any(isinstance(code, str) and code.lower() in _PERMANENT_CODES for code in codes)


def retry_after(headers: Mapping[str, str]) -> float | None:
    """The upstream's requested wait in seconds, if it names one."""
    millis = headers.get("retry-after-ms") or headers.get("Retry-After-Ms")
    if millis:
        try:
            return max(0.0, float(millis) / 1000)
        except ValueError:
            pass
    value = headers.get("Retry-After") or headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None
