"""Where the data lives: ``storage.path`` is an SQLite file path or a ``postgresql://`` URL, told apart and checked
here, and the one way a location is shown (in logs, errors, the CLI): with any password replaced by ``***``.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

SCHEMES = ("postgresql", "postgres")


class DatabaseUrlError(ValueError):
    """A ``postgresql://`` URL that cannot be used; its message never contains the password."""


def is_database_url(location: str) -> bool:
    """Whether ``storage.path`` names a PostgreSQL database rather than an SQLite file."""
    scheme, sep, _ = location.partition("://")
    return bool(sep) and scheme.lower() in SCHEMES


def check_database_url(url: str) -> str:
    """The URL unchanged when it can name a PostgreSQL database, else ``DatabaseUrlError`` (password-free)."""
    try:
        parts = urlsplit(url)
        if "," not in parts.netloc:  # several host:port pairs (libpq's failover list) are for the driver to read
            parts.port  # noqa: B018 - raises ValueError for a port that is not a number
        query = dict(parse_qsl(parts.query, strict_parsing=True)) if parts.query else {}
    except ValueError:
        raise DatabaseUrlError(f"not a valid PostgreSQL URL: {redact(url)}") from None
    if parts.fragment:
        raise DatabaseUrlError(f"a PostgreSQL URL has no #fragment: {redact(url)}")
    if not parts.hostname and "host" not in query:
        raise DatabaseUrlError(f"the PostgreSQL URL names no host: {redact(url)}")
    if not parts.path.strip("/") and "dbname" not in query:
        raise DatabaseUrlError(f"the PostgreSQL URL names no database (postgresql://host/DBNAME): {redact(url)}")
    return url


def redact(location: str) -> str:
    """``location`` safe to show: a URL's password (in its user part, or a ``password=`` option) as ``***``."""
    if not is_database_url(location):
        return location
    try:
        parts = urlsplit(location)
    except ValueError:
        return location.partition("://")[0] + "://***"
    netloc = parts.netloc
    user, at, host = netloc.rpartition("@")
    if at and ":" in user:
        netloc = f"{user.partition(':')[0]}:***@{host}"
    try:
        fields = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=True) if parts.query else []
    except ValueError:  # options that cannot be told apart may hide a password anywhere in them
        fields = [("options", "***")]
    query = "&".join(f"{name}=***" if name.lower() == "password" else f"{name}={value}" for name, value in fields)
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def describe(config: Any) -> str:
    """The configured storage location, safe to show (``config`` is a ``Config``)."""
    return redact(config.db_url) if config.db_url is not None else str(config.db_path)
