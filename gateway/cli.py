"""Command line: ``gateway serve [--config PATH] [--host HOST] [--port PORT] [--db PATH] [--upstream-base-url URL]``.

A bad setting, or a database or address that cannot be opened, ends start-up with one line on stderr naming
the setting and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import sys
from collections.abc import Sequence

from gateway.app import serve
from gateway.config import SETTINGS, Config, ConfigError, load_config
from gateway.logconfig import configure_logging

EXIT_BAD_SETTING = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway", description="Memory gateway for OpenAI-compatible chat APIs.")
    commands = parser.add_subparsers(dest="command", required=True)
    serve_cmd = commands.add_parser("serve", help="run the HTTP server")
    serve_cmd.add_argument("--config", metavar="PATH", help="config file (default: ./config.toml if present)")
    for setting in SETTINGS:
        if setting.flag:
            serve_cmd.add_argument(
                setting.flag,
                dest=setting.key,
                metavar=setting.key.split(".")[-1].upper(),
                help=f"{setting.help} [{setting.key}, env {setting.env}, default {setting.default}]",
            )
    return parser


def _fail(message: str) -> int:
    print(f"gateway: error: {message}", file=sys.stderr)
    return EXIT_BAD_SETTING


def _run_server(config: Config) -> int:
    try:
        asyncio.run(serve(config))
    except sqlite3.Error as exc:
        return _fail(f"storage.path: cannot open database {str(config.db_path)!r}: {exc}")
    except OSError as exc:
        if exc.filename is not None:
            return _fail(f"storage.path: cannot open database {str(config.db_path)!r}: {exc.strerror}")
        return _fail(f"server.host/server.port: cannot listen on {config.host}:{config.port}: {exc.strerror}")
    except KeyboardInterrupt:
        pass
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = vars(_parser().parse_args(argv))
    try:
        config = load_config(args.pop("config"), flags=args)
    except ConfigError as exc:
        return _fail(str(exc))
    configure_logging(config.log_level, config.log_format, cache=True)
    return _run_server(config)
