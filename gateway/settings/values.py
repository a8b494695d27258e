"""The value checkers of ``gateway.settings.config``: each turns a raw value (from config.toml, an environment
variable or a flag) into its typed form, or raises ``ConfigError`` naming the setting."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from gateway.settings.database import DatabaseUrlError, check_database_url, is_database_url


class ConfigError(Exception):
    """A setting is missing, malformed or out of range; the message names it."""


def as_str(key: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    return value


def as_int(key: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise ConfigError(f"{key}: expected an integer, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if not low <= value <= high:
        raise ConfigError(f"{key}: must be between {low} and {high}, got {value}")
    return value


def as_number(key: str, value: Any, unit: str, low: float, high: float, *, zero: bool) -> float:
    """A number of ``unit`` in (low, high], or [low, high] when ``zero`` allows the lower bound itself."""
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise ConfigError(f"{key}: expected a number of {unit}, got {value!r}") from None
    in_range = isinstance(value, int | float) and (low <= value if zero else low < value) and value <= high
    if isinstance(value, bool) or not in_range:
        bounds = f"{'[' if zero else '('}{low:g}, {high:g}]"
        raise ConfigError(f"{key}: expected a number of {unit} in {bounds}, got {value!r}")
    return float(value)


def as_seconds(key: str, value: Any) -> float:
    return as_number(key, value, "seconds", 0, 86400, zero=False)


def as_days(key: str, value: Any) -> float:
    return as_number(key, value, "days", 0, 36500, zero=True)


def as_bool(key: str, value: Any) -> bool:
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0", "yes", "no"):
        return value.strip().lower() in ("true", "1", "yes")
    if not isinstance(value, bool):
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    return value


def choice(key: str, value: Any, choices: tuple[str, ...]) -> str:
    text = as_str(key, value).lower()
    if text not in choices:
        raise ConfigError(f"{key}: must be one of {', '.join(choices)}, got {value!r}")
    return text


def url(key: str, value: Any) -> str:
    text = as_str(key, value).strip().rstrip("/")
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"{key}: expected an http(s) URL, got {value!r}")
    return text


def origins(key: str, value: Any) -> tuple[str, ...]:
    """Browser origins (scheme://host[:port], no path) or "*"; a list, or from the environment a comma-separated
    string."""
    items = [item.strip() for item in value.split(",") if item.strip()] if isinstance(value, str) else value
    if not isinstance(items, list | tuple):
        raise ConfigError(f"{key}: expected a list of origins, got {value!r}")
    for item in items:
        parts = urlsplit(item) if isinstance(item, str) else None
        if item == "*":
            continue
        if parts is None or parts.scheme not in ("http", "https") or not parts.netloc or parts.path or parts.query:
            raise ConfigError(f"{key}: expected origins like 'https://chat.example.com' or '*', got {item!r}")
    return tuple(items)


def nonempty(key: str, value: Any) -> str:
    text = as_str(key, value).strip()
    if not text:
        raise ConfigError(f"{key}: must not be empty")
    return text


def storage_location(key: str, value: Any) -> str:
    text = nonempty(key, value)
    if not is_database_url(text):
        return text
    try:
        return check_database_url(text)
    except DatabaseUrlError as exc:
        raise ConfigError(f"{key}: {exc}") from None
