"""structlog set-up: JSON lines when stdout is not a terminal, readable console output when it is.

Tracebacks are rendered without local variables: locals of a request handler hold message contents and
credentials, which must never reach a log.

Fields for a request's canonical line are gathered with ``note`` into one dict per request rather than bound one
by one with ``structlog.contextvars`` (each bind copies the context; a request made half a dozen).  Only the
request id is bound, so that any other event of the request carries it.
"""

from __future__ import annotations

import logging
import sys
from contextvars import ContextVar
from typing import Any, TextIO

import orjson
import structlog


def _json(event: dict[str, Any], **_: Any) -> str:
    # orjson: the canonical line is written once per request, and the stdlib encoder was a visible share of it.
    return orjson.dumps(event, default=str).decode()


def configure_logging(
    level: str = "info", fmt: str = "auto", stream: TextIO | None = None, *, cache: bool = False
) -> None:
    """``cache`` binds module-level loggers to this configuration for good (faster); the server sets it,
    in-process tests leave it off so that ``structlog.testing.capture_logs`` can still swap processors."""
    out = stream or sys.stdout
    console = fmt == "console" or (fmt == "auto" and out.isatty())
    renderer: Any
    if console:
        renderer = structlog.dev.ConsoleRenderer(exception_formatter=structlog.dev.plain_traceback)
        exceptions: list[Any] = []
    else:
        renderer = structlog.processors.JSONRenderer(serializer=_json)
        exceptions = [
            structlog.processors.ExceptionRenderer(structlog.tracebacks.ExceptionDictTransformer(show_locals=False))
        ]
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            *exceptions,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=structlog.WriteLoggerFactory(out),
        cache_logger_on_first_use=cache,
    )


_REQUEST_FIELDS: ContextVar[dict[str, Any] | None] = ContextVar("gateway_request_fields", default=None)


def open_request_fields(**fields: Any) -> None:
    """Start the canonical-line fields of the request running in this task."""
    _REQUEST_FIELDS.set(dict(fields))


def note(**fields: Any) -> None:
    """Add fields to the current request's canonical log line; outside a request, do nothing."""
    current = _REQUEST_FIELDS.get()
    if current is not None:
        current.update(fields)


def request_fields() -> dict[str, Any]:
    return _REQUEST_FIELDS.get() or {}
