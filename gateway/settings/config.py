"""Configuration: every setting declared once, loaded from defaults < config.toml < environment < flags.

This module is the only reader of ``os.environ``.  ``load_config`` returns one frozen ``Config`` that the rest of
the gateway receives; a bad value raises ``ConfigError`` whose message names the setting, which the CLI prints as
one line before exiting with status 2.
"""

from __future__ import annotations

import difflib
import os
import sys
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.settings.database import is_database_url
from gateway.settings.declared import SETTINGS
from gateway.settings.models import ModelTable, parse_models
from gateway.settings.values import (
    ConfigError as ConfigError,  # raised here, imported from here by the rest of the gateway
)
from gateway.settings.values import (
    as_bool,
    as_days,
    as_int,
    as_number,
    as_seconds,
    as_str,
    choice,
    nonempty,
    origins,
    storage_location,
    url,
)

DEFAULT_CONFIG_FILE = "config.toml"


@dataclass(frozen=True)
class Limits:
    """Per-key request limits (0: none)."""

    concurrent_requests: int
    requests_per_minute: int


TENANT_LIMITS = ("concurrent_requests", "requests_per_minute")  # what a [tenants.NAME] table may set


@dataclass(frozen=True)
class Config:
    """Validated settings; see ``SETTINGS`` for meanings and defaults."""

    host: str
    port: int
    max_body_bytes: int
    cors_origins: tuple[str, ...]
    console: bool
    keepalive_timeout: float
    header_timeout: float
    body_timeout: float
    max_connections: int
    db_path: Path  # SQLite's file; unused (Path()) when db_url is set
    # The postgresql:// URL when storage.path names one, else None; kept out of repr() (it may hold a password).
    db_url: str | None = field(repr=False)
    storage_pool_size: int
    workers: int
    synchronous: str
    busy_timeout_ms: int
    cache_messages: int
    cache_bytes: int
    upstream_base_url: str
    upstream_api_key: str
    upstream_protocol: str
    native_base_url: str
    connect_timeout: float
    first_byte_timeout: float
    idle_timeout: float
    max_attempts: int
    backoff_seconds: float
    retry_after_cap: float
    retry_budget: float
    max_in_flight: int
    drain_seconds: float
    drain_grace: float
    pool_size: int
    pool_timeout: float
    idle_days: float
    purge_interval: float
    auth_mode: str
    allow_open: bool
    upstream_key_header: str
    max_messages: int
    max_header_bytes: int
    max_history_bytes: int
    low_water: float
    max_turns: int
    summarize: bool
    summary_model: str
    summary_prompt: str
    idempotency_seconds: float
    log_level: str
    log_format: str
    default_limits: Limits
    tenant_limits: Mapping[str, Limits]  # [tenants.NAME] overrides, already merged with the defaults
    models: ModelTable  # [models."NAME"] over the built-in table

    def limits_for(self, tenant: str | None) -> Limits:
        """The limits of a tenant's keys (or of a credential without a tenant, in open mode)."""
        return self.tenant_limits.get(tenant, self.default_limits) if tenant is not None else self.default_limits


_VALIDATORS: dict[str, Callable[[str, Any], Any]] = {
    "server.host": nonempty,
    "server.port": lambda k, v: as_int(k, v, 0, 65535),
    "server.max_body_bytes": lambda k, v: as_int(k, v, 1024, 1 << 31),
    "server.cors_origins": origins,
    "server.console": as_bool,
    "server.keepalive_timeout_seconds": as_seconds,
    "server.header_timeout_seconds": as_seconds,
    "server.body_timeout_seconds": as_seconds,
    "server.max_connections": lambda k, v: as_int(k, v, 0, 10_000_000),
    "storage.path": storage_location,
    "storage.pool_size": lambda k, v: as_int(k, v, 1, 1000),
    "server.workers": lambda k, v: as_int(k, v, 1, 256),
    "storage.synchronous": lambda k, v: choice(k, v, ("normal", "full")),
    "storage.busy_timeout_ms": lambda k, v: as_int(k, v, 0, 600_000),
    "storage.cache_messages": lambda k, v: as_int(k, v, 0, 100_000_000),
    "storage.cache_bytes": lambda k, v: as_int(k, v, 0, 1 << 40),
    "upstream.base_url": url,
    "upstream.protocol": lambda k, v: choice(k, v, ("compatible", "native")),
    "upstream.native_base_url": url,
    "upstream.api_key": lambda k, v: as_str(k, v).strip(),
    "upstream.connect_timeout": as_seconds,
    "upstream.first_byte_timeout": as_seconds,
    "upstream.idle_timeout": as_seconds,
    "upstream.max_attempts": lambda k, v: as_int(k, v, 1, 10),
    "upstream.backoff_seconds": as_seconds,
    "upstream.retry_after_cap_seconds": as_seconds,
    "upstream.retry_budget_seconds": as_seconds,
    "upstream.max_in_flight": lambda k, v: as_int(k, v, 1, 1_000_000),
    "server.drain_seconds": as_seconds,
    "server.drain_grace_seconds": lambda k, v: as_number(k, v, "seconds", 0, 3600, zero=True),
    "upstream.pool_size": lambda k, v: as_int(k, v, 1, 10_000),
    "upstream.pool_timeout_seconds": as_seconds,
    "retention.idle_days": as_days,
    "retention.purge_interval_seconds": as_seconds,
    "auth.mode": lambda k, v: choice(k, v, ("auto", "open", "keys")),
    "auth.allow_open": as_bool,
    "auth.upstream_key_header": lambda k, v: as_str(k, v).strip(),
    "limits.concurrent_requests": lambda k, v: as_int(k, v, 0, 1_000_000),
    "limits.requests_per_minute": lambda k, v: as_int(k, v, 0, 100_000_000),
    "limits.max_messages": lambda k, v: as_int(k, v, 1, 1_000_000),
    "limits.max_header_bytes": lambda k, v: as_int(k, v, 1024, 1 << 20),
    "limits.max_history_bytes": lambda k, v: as_int(k, v, 1024, 1 << 40),
    "memory.low_water": lambda k, v: as_number(k, v, "fraction", 0, 1, zero=False),
    "memory.max_turns": lambda k, v: as_int(k, v, 0, 1_000_000),
    "memory.summarize": as_bool,
    "memory.summary_model": lambda k, v: as_str(k, v).strip(),
    "memory.summary_prompt": nonempty,
    "memory.idempotency_seconds": lambda k, v: as_number(k, v, "seconds", 0, 30 * 86400, zero=True),
    "log.level": lambda k, v: choice(k, v, ("debug", "info", "warning", "error")),
    "log.format": lambda k, v: choice(k, v, ("auto", "json", "console")),
}


_TABLES = ("tenants", "models")  # sections holding one table per name rather than settings
# Variables of the gateway's family that are not settings: the config file's path, and the address of the
# gateway that the examples (clients) read, often exported in the same shell.
_OTHER_VARIABLES = frozenset({"GATEWAY_CONFIG", "GATEWAY_URL"})


def _warn_unknown_variables(env: Mapping[str, str], warn: Callable[[str], None]) -> None:
    """A ``GATEWAY_*`` variable that names no setting is most likely a typo: say so (an unknown key in the
    config file is an error; a stray variable in an environment the gateway shares with everything else is not)."""
    known = {setting.variable for setting in SETTINGS} | _OTHER_VARIABLES
    # Suggestions, compared without the prefix they all share (which would make any two look alike): each
    # variable, and for a setting with a variable of its own the GATEWAY_<SECTION>_<NAME> it does not answer to
    # (GATEWAY_UPSTREAM_API_KEY: DASHSCOPE_API_KEY).
    by_rest = {name.removeprefix("GATEWAY_"): name for name in known if name.startswith("GATEWAY_")}
    by_rest.update({setting.key.upper().replace(".", "_"): setting.variable for setting in SETTINGS if setting.env})
    for name in sorted(name for name in env if name.startswith("GATEWAY_") and name not in known):
        close = difflib.get_close_matches(name.removeprefix("GATEWAY_"), sorted(by_rest), n=1, cutoff=0.7)
        hint = (
            f"did you mean {by_rest[close[0]]}?"
            if close
            else "settings are GATEWAY_<SECTION>_<NAME>, e.g. GATEWAY_AUTH_MODE"
        )
        warn(f"{name}: unknown environment variable, ignored ({hint})")


def _print_warning(message: str) -> None:
    print(f"gateway: warning: {message}", file=sys.stderr)


def _read_toml(path: Path) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """The file's settings as dotted keys, and its ``[tenants.NAME]`` and ``[models."NAME"]`` tables by section."""
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"config file {str(path)!r}: cannot read ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {str(path)!r}: invalid TOML ({exc})") from None
    except UnicodeDecodeError as exc:  # TOML is UTF-8 by definition; tomllib lets the decoding error through
        raise ConfigError(f"config file {str(path)!r}: not UTF-8 text (byte {exc.start})") from None
    known = {s.key for s in SETTINGS}
    flat: dict[str, Any] = {}
    for section, table in data.items():
        if not isinstance(table, dict):
            raise ConfigError(f"{section}: expected a [{section}] table in {str(path)!r}")
        if section in _TABLES:
            continue
        for name, value in table.items():
            key = f"{section}.{name}"
            if key not in known:
                raise ConfigError(f"{key}: unknown setting in {str(path)!r}")
            flat[key] = value
    return flat, {section: data.get(section, {}) for section in _TABLES}


def _tenant_limits(tables: dict[str, Any], defaults: Limits) -> dict[str, Limits]:
    """``[tenants.NAME]`` tables over the default limits."""
    limits = {}
    for tenant, table in tables.items():
        if not isinstance(table, dict):
            raise ConfigError(f"tenants.{tenant}: expected a [tenants.{tenant}] table")
        values = {name: getattr(defaults, name) for name in TENANT_LIMITS}
        for name, value in table.items():
            key = f"tenants.{tenant}.{name}"
            if name not in TENANT_LIMITS:
                raise ConfigError(f"{key}: unknown setting (a tenant may set {', '.join(TENANT_LIMITS)})")
            values[name] = _VALIDATORS[f"limits.{name}"](key, value)
        limits[tenant] = Limits(**values)
    return limits


def load_config(
    config_path: str | None = None,
    env: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
    warn: Callable[[str], None] = _print_warning,
) -> Config:
    """Build the one ``Config``: flags > environment > config file > defaults, then validate every value.

    ``flags`` maps setting keys (``"server.port"``) to values given on the command line; ``None`` values are
    ignored.  Without an explicit path (flag or ``GATEWAY_CONFIG``) a missing ``config.toml`` is not an error.
    ``warn`` is told, one line each, of ``GATEWAY_*`` variables that name no setting (default: stderr).
    """
    env = os.environ if env is None else env
    _warn_unknown_variables(env, warn)
    flags = flags or {}
    explicit = config_path or env.get("GATEWAY_CONFIG")
    path = Path(explicit or DEFAULT_CONFIG_FILE)
    if explicit and not path.is_file():
        raise ConfigError(f"config file {str(path)!r}: not found")
    values: dict[str, Any] = {s.key: s.default for s in SETTINGS}
    sources: dict[str, str] = {}
    tables: dict[str, dict[str, Any]] = {section: {} for section in _TABLES}
    if path.is_file():
        file_values, tables = _read_toml(path)
        values.update(file_values)
        sources.update({key: str(path) for key in file_values})
    for setting in SETTINGS:
        if env.get(setting.variable):
            values[setting.key] = env[setting.variable]
            sources[setting.key] = setting.variable
        if flags.get(setting.key) is not None:
            values[setting.key] = flags[setting.key]
            sources[setting.key] = str(setting.flag)
    v: dict[str, Any] = {}
    for key, value in values.items():
        try:
            v[key] = _VALIDATORS[key](key, value)
        except ConfigError as exc:
            source = f" (from {sources[key]})" if key in sources else ""
            raise ConfigError(str(exc).replace(f"{key}:", f"{key}{source}:", 1)) from None
    defaults = Limits(v["limits.concurrent_requests"], v["limits.requests_per_minute"])
    return Config(
        host=v["server.host"],
        port=v["server.port"],
        max_body_bytes=v["server.max_body_bytes"],
        cors_origins=v["server.cors_origins"],
        console=v["server.console"],
        keepalive_timeout=v["server.keepalive_timeout_seconds"],
        header_timeout=v["server.header_timeout_seconds"],
        body_timeout=v["server.body_timeout_seconds"],
        max_connections=v["server.max_connections"],
        db_path=Path() if is_database_url(v["storage.path"]) else Path(v["storage.path"]),
        db_url=v["storage.path"] if is_database_url(v["storage.path"]) else None,
        storage_pool_size=v["storage.pool_size"],
        workers=v["server.workers"],
        synchronous=v["storage.synchronous"],
        busy_timeout_ms=v["storage.busy_timeout_ms"],
        cache_messages=v["storage.cache_messages"],
        cache_bytes=v["storage.cache_bytes"],
        upstream_base_url=v["upstream.base_url"],
        upstream_api_key=v["upstream.api_key"],
        upstream_protocol=v["upstream.protocol"],
        native_base_url=v["upstream.native_base_url"],
        connect_timeout=v["upstream.connect_timeout"],
        first_byte_timeout=v["upstream.first_byte_timeout"],
        idle_timeout=v["upstream.idle_timeout"],
        max_attempts=v["upstream.max_attempts"],
        backoff_seconds=v["upstream.backoff_seconds"],
        retry_after_cap=v["upstream.retry_after_cap_seconds"],
        retry_budget=v["upstream.retry_budget_seconds"],
        max_in_flight=v["upstream.max_in_flight"],
        drain_seconds=v["server.drain_seconds"],
        drain_grace=v["server.drain_grace_seconds"],
        pool_size=v["upstream.pool_size"],
        pool_timeout=v["upstream.pool_timeout_seconds"],
        idle_days=v["retention.idle_days"],
        purge_interval=v["retention.purge_interval_seconds"],
        auth_mode=v["auth.mode"],
        allow_open=v["auth.allow_open"],
        upstream_key_header=v["auth.upstream_key_header"],
        max_messages=v["limits.max_messages"],
        max_header_bytes=v["limits.max_header_bytes"],
        max_history_bytes=v["limits.max_history_bytes"],
        low_water=v["memory.low_water"],
        max_turns=v["memory.max_turns"],
        summarize=v["memory.summarize"],
        summary_model=v["memory.summary_model"],
        summary_prompt=v["memory.summary_prompt"],
        idempotency_seconds=v["memory.idempotency_seconds"],
        log_level=v["log.level"],
        log_format=v["log.format"],
        default_limits=defaults,
        tenant_limits=_tenant_limits(tables["tenants"], defaults),
        models=parse_models(tables["models"], ConfigError),
    )
