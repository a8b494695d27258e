"""Command line: ``gateway serve``, ``gateway conversations list|show|export|delete|import``, ``gateway purge``,
``gateway keys create|list|revoke`` and ``gateway --version``.

``serve [--config PATH] [--host HOST] [--port PORT] [--workers N] [--db PATH] [--upstream-base-url URL]`` runs the
server: one process, or with ``--workers`` N > 1 a parent and N worker processes sharing its listening socket
(``gateway.cli.workers``).  The other commands work on the database (``--config``, ``--db``: a file or a
``postgresql://`` URL), also while a server uses it.  A bad setting, or a database or address that cannot be
opened, ends with one line on stderr naming the setting and exit status 2 (a bad argument too); a command that
cannot do what was asked (no such conversation, say) with one line and status 1.  Only ``keys create`` may create
the database; the others refuse a path where none exists.  Never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
from collections.abc import Awaitable, Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any, NoReturn

from gateway import __version__
from gateway.app import serve
from gateway.cli import admin, workers
from gateway.core.ledger import Pricing
from gateway.core.ports import Storage
from gateway.core.transfer import FORMATS, TransferError
from gateway.errors import GatewayError
from gateway.observability.logs import configure_logging
from gateway.settings.config import Config, ConfigError, load_config
from gateway.settings.database import describe
from gateway.settings.declared import SETTINGS
from gateway.storage.open import STORAGE_ERRORS, storage_exists

EXIT_FAILED = 1
EXIT_BAD_SETTING = 2
MAX_IDLE_DAYS = 36500  # as retention.idle_days
OWNER_HELP = "owner hash or a prefix of it, as logged; 'none' for clients without a credential"


class _Parser(argparse.ArgumentParser):
    """argparse with its errors on one line (and exit status 2), like every other bad setting; subcommands'
    parsers are of the same class."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_SETTING, f"gateway: error: {message} (see '{self.prog} --help')\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="gateway", description="Memory gateway for OpenAI-compatible chat APIs.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve_cmd = commands.add_parser("serve", help="run the HTTP server")
    serve_cmd.add_argument("--config", metavar="PATH", help="config file (default: ./config.toml if present)")
    for setting in SETTINGS:
        if setting.flag:
            serve_cmd.add_argument(
                setting.flag,
                dest=setting.key,
                metavar=setting.key.split(".")[-1].upper(),
                help=f"{setting.help} [{setting.key}, env {setting.variable}, default {setting.default}]",
            )
    # Internal: how a parent of --workers starts each worker (gateway.cli.workers), not for people.
    serve_cmd.add_argument("--listen-fd", dest="listen_fds", type=int, action="append", help=argparse.SUPPRESS)
    serve_cmd.add_argument("--worker-index", dest="worker_index", type=int, default=0, help=argparse.SUPPRESS)
    serve_cmd.add_argument("--parent-fd", dest="parent_fd", type=int, help=argparse.SUPPRESS)
    database = _Parser(add_help=False)
    database.add_argument("--config", metavar="PATH", help="config file (default: ./config.toml if present)")
    database.add_argument(
        "--db", dest="storage.path", metavar="PATH", help="database file or postgresql:// URL [storage.path]"
    )
    conversations = commands.add_parser(
        "conversations", help="list, search, show, export, import or delete conversations"
    )
    actions = conversations.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", parents=[database], help="conversations by recent activity")
    listing.add_argument("--owner", metavar="HASH", help=OWNER_HELP)
    listing.add_argument("--limit", type=_positive, default=50, metavar="N", help="at most N (default 50)")
    searching = actions.add_parser("search", parents=[database], help="conversations whose messages hold every word")
    searching.add_argument("text", metavar="TEXT", help="words, in any order (the last may be a prefix)")
    searching.add_argument("--owner", metavar="HASH", help=OWNER_HELP)
    searching.add_argument("--limit", type=_positive, default=20, metavar="N", help="at most N (default 20)")
    show = actions.add_parser("show", parents=[database], help="a conversation as a readable transcript")
    export = actions.add_parser("export", parents=[database], help="a conversation as JSON lines on stdout")
    export.add_argument("--format", choices=FORMATS, default="jsonl", help="jsonl (exact, default) or openai")
    delete = actions.add_parser("delete", parents=[database], help="delete conversations and all their messages")
    for action in (show, export, delete):
        action.add_argument("ids", nargs="+" if action is delete else 1, metavar="ID", help="conversation id")
        action.add_argument("--owner", metavar="HASH", help=OWNER_HELP)
    imports = actions.add_parser("import", parents=[database], help="conversations from an export file")
    imports.add_argument("file", metavar="FILE", help="export file ('-' for stdin)")
    imports.add_argument("--owner", metavar="HASH", help="store them under this full owner hash, or 'none'")
    purge = commands.add_parser("purge", parents=[database], help="delete conversations idle too long")
    purge.add_argument("--idle-days", type=_days, metavar="DAYS", help="instead of retention.idle_days")
    keys = commands.add_parser("keys", help="create, list or revoke gateway keys")
    key_actions = keys.add_subparsers(dest="action", required=True)
    create = key_actions.add_parser("create", parents=[database], help="a new key, printed once")
    create.add_argument("--tenant", required=True, metavar="NAME", help="the tenant whose conversations it opens")
    create.add_argument("--name", metavar="LABEL", help="a label to tell keys apart")
    create.add_argument("--admin", action="store_true", help="may manage every tenant's conversations (?tenant=)")
    key_actions.add_parser("list", parents=[database], help="every key, without secrets")
    revoke = key_actions.add_parser("revoke", parents=[database], help="revoke a key for good")
    revoke.add_argument("key_id", metavar="KEY_ID", help="the key's id (key_...), as listed")
    return parser


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def _days(text: str) -> float:
    """A number of days as ``retention.idle_days`` takes it: finite, 0 to MAX_IDLE_DAYS (nan and inf parse as
    floats, and a negative age would purge everything)."""
    try:
        days = float(text)
    except ValueError:
        days = math.nan
    if not 0 <= days <= MAX_IDLE_DAYS:  # false for nan as well
        raise argparse.ArgumentTypeError(f"expected a number of days from 0 to {MAX_IDLE_DAYS}, got {text!r}")
    return days


def _version() -> str:
    """The installed package's version (the source tree's when it is not installed)."""
    try:
        return metadata.version("memory-gateway")
    except metadata.PackageNotFoundError:
        return __version__


def _fail(message: str) -> int:
    print(f"gateway: error: {message}", file=sys.stderr)
    return EXIT_BAD_SETTING


def _run_server(config: Config, argv: Sequence[str], internal: dict[str, Any]) -> int:
    """Serve as one process, as the parent of ``server.workers`` workers, or (started by such a parent, with
    ``--listen-fd``) as one of its workers; what stops start-up becomes one line and status 2."""
    try:
        if internal["listen_fds"]:
            workers.serve_worker(config, internal["listen_fds"], internal["worker_index"], internal["parent_fd"])
        elif config.workers > 1:
            return workers.run(config, argv)
        else:
            asyncio.run(serve(config))
    except ConfigError as exc:
        return _fail(str(exc))
    except STORAGE_ERRORS as exc:
        return _fail(f"storage.path: cannot open database {describe(config)!r}: {exc}")
    except GatewayError as exc:
        return _fail(f"storage.path: cannot use database {describe(config)!r}: {exc.message}")
    except OSError as exc:
        if exc.filename is not None:
            return _fail(f"storage.path: cannot open database {describe(config)!r}: {exc.strerror}")
        return _fail(f"server.host/server.port: cannot listen on {config.host}:{config.port}: {exc.strerror}")
    except KeyboardInterrupt:
        pass
    return 0


def _admin_command(args: dict[str, Any], config: Config) -> Callable[[Storage], Awaitable[None]]:
    """The chosen database command, bound to its arguments."""
    out, command, action = sys.stdout, args["command"], args.get("action")
    if command == "purge":
        idle_days = config.idle_days if args["idle_days"] is None else args["idle_days"]
        return lambda storage: admin.purge(storage.catalog, out, idle_days=idle_days, locks=storage.locks)
    if command == "keys":
        if action == "create":
            return lambda storage: admin.create_key(
                storage.keys, out, tenant=args["tenant"], name=args["name"], admin=args["admin"]
            )
        if action == "list":
            return lambda storage: admin.list_keys(storage.keys, out)
        return lambda storage: admin.revoke_key(storage.keys, out, args["key_id"])
    if action == "import":
        lines, owner = _read_lines(args["file"]), admin.import_owner(args["owner"])
        return lambda storage: admin.import_conversations(
            storage.catalog, out, lines, owner=owner, max_history_bytes=config.max_history_bytes, locks=storage.locks
        )
    owner = admin.owner_filter(args["owner"])
    if action == "list":
        return lambda storage: admin.list_conversations(storage.catalog, out, owner=owner, limit=args["limit"])
    if action == "search":
        text, limit = args["text"], args["limit"]
        return lambda storage: admin.search_conversations(storage.catalog, out, text, owner=owner, limit=limit)
    if action == "show":
        pricing = Pricing(config.models)
        return lambda storage: admin.show_conversation(
            storage.catalog, out, args["ids"][0], owner=owner, pricing=pricing
        )
    if action == "export":
        fmt = args["format"]
        return lambda storage: admin.export_conversation(storage.catalog, out, args["ids"][0], owner=owner, fmt=fmt)
    return lambda storage: admin.delete_conversations(storage.catalog, out, args["ids"], owner=owner)


def _read_lines(path: str) -> list[str]:
    if path == "-":
        return sys.stdin.read().splitlines()
    try:
        return Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise admin.CommandFailed(f"cannot read {path!r}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise admin.CommandFailed(f"cannot read {path!r}: not UTF-8 text") from None


async def _run_admin(config: Config, command: Callable[[Storage], Awaitable[None]]) -> None:
    async with admin.open_store(config) as storage:
        await command(storage)


def _admin(args: dict[str, Any], config: Config) -> int:
    # A mistyped path must not create an empty database: only the first key may (a new deployment's first step).
    creates = args["command"] == "keys" and args.get("action") == "create"
    if not creates and not storage_exists(config):
        return _fail(f"storage.path: no database at {describe(config)!r}")
    try:
        asyncio.run(_run_admin(config, _admin_command(args, config)))
    except (admin.CommandFailed, TransferError) as exc:
        print(f"gateway: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except GatewayError as exc:
        print(f"gateway: error: {exc.message}", file=sys.stderr)
        return EXIT_FAILED
    except STORAGE_ERRORS as exc:
        return _fail(f"storage.path: cannot use database {describe(config)!r}: {exc}")
    except OSError as exc:  # the database's directory cannot be made, say
        return _fail(f"storage.path: cannot use database {describe(config)!r}: {exc.strerror}")
    except KeyboardInterrupt:
        return EXIT_FAILED
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = vars(_parser().parse_args(argv))
    command = args.pop("command")
    flags = {key: value for key, value in args.items() if "." in key}
    try:
        config = load_config(args.pop("config"), flags=flags)
    except ConfigError as exc:
        return _fail(str(exc))
    if command == "serve":
        configure_logging(config.log_level, config.log_format, cache=True)
        internal = {name: args.pop(name) for name in ("listen_fds", "worker_index", "parent_fd")}
        return _run_server(config, argv, internal)
    configure_logging("warning", "console", cache=True)
    return _admin({**args, "command": command}, config)
