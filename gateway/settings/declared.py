"""Every setting of the gateway, declared once: its dotted key in config.toml, default, help, and optional
environment variable and command-line flag.  The CLI help, the shipped config.toml and the README's table are
kept in step with this list (the tests check the last two); ``gateway.settings.config`` loads and validates the values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

DASHSCOPE_COMPAT_URL = "https://dashscope.aliyuncs.com/compatible-mode/v1"


@dataclass(frozen=True)
class Setting:
    """One setting: its dotted key in config.toml, default, help text, and optional env var / CLI flag.  A setting
    without a named variable is read from ``GATEWAY_<SECTION>_<NAME>`` (``auth.mode``: ``GATEWAY_AUTH_MODE``), so
    a container can be configured entirely through its environment."""

    key: str
    default: Any
    help: str
    env: str | None = None
    flag: str | None = None

    @property
    def variable(self) -> str:
        return self.env or "GATEWAY_" + self.key.upper().replace(".", "_")


SETTINGS: tuple[Setting, ...] = (
    Setting("server.host", "127.0.0.1", "Address to listen on.", "GATEWAY_HOST", "--host"),
    Setting("server.port", 8080, "TCP port to listen on (0 picks a free port).", "GATEWAY_PORT", "--port"),
    Setting(
        "server.workers",
        1,
        "Worker processes sharing the listening socket, each a full gateway (restarted when one dies).",
        flag="--workers",
    ),
    Setting("server.drain_seconds", 30.0, "On SIGTERM, how long in-flight requests and streams may finish."),
    Setting("server.drain_grace_seconds", 0.0, "On SIGTERM, how long to keep serving with /readyz failing first."),
    Setting("server.max_body_bytes", 10 * 1024 * 1024, "Largest request body accepted; larger gets 413."),
    Setting(
        "server.cors_origins",
        [],
        'Browser origins allowed to call the gateway (CORS), e.g. ["https://chat.example.com"]; ["*"] for any; '
        "[] turns CORS off. From the environment: comma-separated.",
    ),
    Setting(
        "server.console",
        True,
        "Serve the web console at /ui/ (sign-in with a gateway key; in open auth mode only on a loopback address).",
    ),
    Setting("server.keepalive_timeout_seconds", 75.0, "Seconds an idle keep-alive client connection stays open."),
    Setting(
        "server.header_timeout_seconds",
        10.0,
        "Seconds a client has to send a request's headers, from connecting or from the first byte of a next request.",
    ),
    Setting(
        "server.body_timeout_seconds", 60.0, "Seconds a client has to send a whole request body, however it trickles."
    ),
    Setting(
        "server.max_connections",
        0,
        "Most open client connections; past it the longest-idle one is closed, or the new one refused (0: the "
        "open-file limit less room for the upstream pool, the database and logs).",
    ),
    Setting(
        "storage.path",
        "./gateway.db",
        "SQLite database file (created on first start), or a postgresql:// URL for a shared PostgreSQL database.",
        "GATEWAY_DB",
        "--db",
    ),
    Setting(
        "storage.pool_size",
        10,
        "PostgreSQL only: most connections each process keeps open to the database (plus a few for locks).",
    ),
    Setting(
        "storage.synchronous",
        "normal",
        "SQLite synchronous mode: 'normal' survives a process crash (kill -9), 'full' also a power cut.",
    ),
    Setting("storage.busy_timeout_ms", 5000, "How long a write waits for another process's lock (ms)."),
    Setting(
        "storage.cache_messages",
        50_000,
        "Messages of recently active conversations kept in memory, saving a database read per turn (0: off).",
    ),
    Setting(
        "storage.cache_bytes",
        64 * 1024 * 1024,
        "Bytes (as stored JSON) the history cache may hold, on top of storage.cache_messages (0: off).",
    ),
    Setting(
        "upstream.base_url",
        DASHSCOPE_COMPAT_URL,
        "OpenAI-compatible upstream; /chat/completions is appended.",
        "GATEWAY_UPSTREAM_BASE_URL",
        "--upstream-base-url",
    ),
    Setting(
        "upstream.protocol",
        "compatible",
        "'compatible': every request goes to base_url as OpenAI chat completions; 'native': to native_base_url in "
        "DashScope's own protocol.",
    ),
    Setting("upstream.native_base_url", "https://dashscope.aliyuncs.com/api/v1", "DashScope's native API base URL."),
    Setting(
        "upstream.api_key",
        "",
        "Key sent upstream; empty forwards the client's Authorization header instead.",
        "DASHSCOPE_API_KEY",
    ),
    Setting("upstream.connect_timeout", 5.0, "Seconds to open a connection to the upstream."),
    Setting("upstream.first_byte_timeout", 60.0, "Seconds to wait for the upstream's response headers."),
    Setting("upstream.idle_timeout", 60.0, "Seconds of silence allowed between chunks of a streamed reply."),
    Setting("upstream.max_attempts", 3, "Attempts per request on 429, 500, 502, 503, 504 and connection errors."),
    Setting("upstream.backoff_seconds", 0.5, "First retry delay; doubles per attempt, with jitter."),
    Setting("upstream.retry_after_cap_seconds", 30.0, "Longest upstream Retry-After that is honoured."),
    Setting("upstream.retry_budget_seconds", 60.0, "Time all attempts of one request may take together."),
    Setting("upstream.max_in_flight", 512, "Chat requests in flight at once; more get 503 with Retry-After."),
    Setting("upstream.pool_size", 100, "Most simultaneous connections to the upstream."),
    Setting(
        "upstream.pool_timeout_seconds",
        30.0,
        "Seconds a request may wait for a free upstream connection; past it 503 (the upstream never saw it).",
    ),
    Setting(
        "retention.idle_days",
        0.0,
        "Delete conversations idle longer than this many days, in the server and with `gateway purge` (0: keep).",
    ),
    Setting("retention.purge_interval_seconds", 3600.0, "How often the server looks for idle conversations."),
    Setting(
        "auth.mode",
        "auto",
        "'open' (owner = hash of the client's credential), 'keys' (gateway keys required), or 'auto' (keys once any "
        "gateway key exists).",
    ),
    Setting(
        "auth.allow_open",
        False,
        "Allow open mode on a non-loopback address while holding an upstream key (anyone reaching it spends it).",
    ),
    Setting(
        "auth.upstream_key_header",
        "",
        "Keys mode without upstream.api_key: the request header whose value goes upstream as Authorization (each "
        "client brings its own upstream key); empty: refuse to start that way.",
    ),
    Setting("limits.concurrent_requests", 0, "Requests one key may have in flight at once (0: no limit)."),
    Setting("limits.requests_per_minute", 0, "Requests one key may start in any 60 seconds (0: no limit)."),
    Setting("limits.max_messages", 2048, "Most messages in one chat request; more gets 400."),
    Setting("limits.max_header_bytes", 16384, "Largest request header line (name and value); larger gets 431."),
    Setting(
        "limits.max_history_bytes",
        64 * 1024 * 1024,
        "Largest stored history of one conversation (JSON bytes); a turn or import past it gets 400.",
    ),
    Setting("memory.low_water", 0.5, "Share of the context window a cut keeps, so later turns share a prefix."),
    Setting("memory.max_turns", 0, "Most user turns of history sent upstream (0: only the window limits)."),
    Setting("memory.summarize", False, "Summarize the turns a cut leaves out and send the summary ahead of the rest."),
    Setting("memory.summary_model", "", "Model that writes summaries ('' : the model of the turn)."),
    Setting(
        "memory.summary_prompt",
        "Summarize the conversation so far for the assistant that will continue it: keep names, numbers, "
        "decisions, open questions and the user's preferences. Write only the summary.",
        "Instruction sent with the turns to summarize.",
    ),
    Setting(
        "memory.idempotency_seconds",
        86400.0,
        "How long a turn's reply is kept under its Idempotency-Key, so a retry gets it again without an upstream call.",
    ),
    Setting("log.level", "info", "One of debug, info, warning, error."),
    Setting("log.format", "auto", "'json', 'console', or 'auto' (console on a terminal, JSON otherwise)."),
)
