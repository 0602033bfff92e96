"""engctl: the engine's docker-compatible command line.

Exit codes follow docker's: 125 when the engine (or engctl) fails, 126 when the container's
command cannot be run, 127 when it is not found, otherwise the container's own exit code.
engctl starts a process per command, so its start-up is part of every command's latency
(``engctl run`` is benchmarked against podman): the path to the first RPC imports no trio,
no argparse, no typing/enum/re/socket.py, and only the module of the command that runs.
tests/cli holds the list of what must stay out.
"""

from __future__ import annotations

import os
import sys
import time

from engine.cli.argspec import Namespace, Parser, fast_parse
from engine.client.sync import Client, default_host
from engine.errors import EngineError, InvalidArgument

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from typing import Any, NoReturn

COMMAND_MODULES = ("system", "containers", "verbs", "images", "networks", "volumes", "build")

# Which module defines each top-level command, so that engctl imports and records only the
# one it runs (tests/cli checks this table against the modules).
COMMANDS = {
    **dict.fromkeys(("version", "info", "events", "system"), "system"),
    **dict.fromkeys(
        ("run", "create", "start", "stop", "restart", "kill", "pause", "unpause", "rm", "ps",
         "inspect", "logs", "wait", "exec", "rename", "container", "port", "attach"),
        "containers",
    ),
    **dict.fromkeys(
        ("pull", "push", "images", "rmi", "tag", "load", "save", "import", "history", "image",
         "login", "logout"),
        "images",
    ),
    "network": "networks",
    **dict.fromkeys(("update", "top", "stats", "cp", "diff", "export", "commit"), "verbs"),
    "volume": "volumes",
    "build": "build",
}

EXIT_ENGINE_ERROR = 125


class Context:
    def __init__(self, host: str) -> None:
        self.host = host
        self._client: Client | None = None

    def client(self, timeout: float | None = None) -> Client:
        if self._client is None:
            self._client = Client(self.host, timeout=timeout).connect()
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


def parse_filters(values: list[str]) -> dict[str, list[str]]:
    """``-f key=value`` (repeatable) → {key: [values]}."""
    filters: dict[str, list[str]] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise EngineError(f"bad filter {item!r}: expected key=value")
        filters.setdefault(key.strip(), []).append(value.strip())
    return filters


def key_values(values: list[str], flag: str, *, value_required: bool = False) -> dict[str, str]:
    """docker's map flags (``--label KEY[=VALUE]``, ``-o KEY=VALUE``, repeatable) → a dict;
    ``value_required``: ``KEY`` alone is refused rather than taken as ``KEY=``."""
    result: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not key or (value_required and not sep):
            raise InvalidArgument(f"invalid {flag} {item!r}: expected KEY=VALUE")
        result[key] = value
    return result


def parse_time(value: str) -> float:
    """docker's --since/--until: unix seconds, RFC 3339, or a duration like 10m, 1h30m."""
    try:
        return float(value)
    except ValueError:
        pass
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    total, number = 0.0, ""
    for ch in value:
        if ch.isdigit() or ch == ".":
            number += ch
        elif ch in units and number:
            total += float(number) * units[ch]
            number = ""
        else:
            break
    else:
        if not number and total:
            return time.time() - total
    from datetime import datetime

    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise EngineError(
            f"bad time {value!r}: use unix seconds, RFC 3339 (2026-01-02T15:04:05Z) or a duration (10m)"
        ) from None


def command_parser(modules: tuple[str, ...] = COMMAND_MODULES) -> Parser:
    """engctl's parser as a recording (cheap), with the commands of ``modules``."""
    parser = Parser("engctl", {"description": "Control the engine daemon."})
    parser.add_argument(
        "-H", "--host", default=None, help=f"daemon socket (default $ENGINE_HOST or {default_host()})"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in modules:
        qualified = f"engine.cli.commands.{name}"
        try:
            __import__(qualified)  # not importlib: its package imports warnings, at a cost
        except ModuleNotFoundError as e:
            if e.name != qualified:
                raise
            continue
        sys.modules[qualified].setup(sub)
    return parser


def build_parser() -> argparse.ArgumentParser:
    """The full argparse parser (help, errors and the unusual command lines use it)."""
    return command_parser().build()


def find_command(argv: list[str]) -> str | None:
    """The command word: the first word that is not a global option or its value."""
    i = 0
    while i < len(argv):
        if argv[i] in ("-H", "--host"):
            i += 2
        elif argv[i].startswith("-"):
            i += 1
        else:
            return argv[i]
    return None


def parse(argv: list[str]) -> tuple[Namespace, Parser]:
    """Parse with only the running command's module and no argparse when that suffices;
    otherwise (help, errors, unusual forms) with the full argparse parser, as before."""
    module = COMMANDS.get(find_command(argv) or "")
    if module is not None:
        parser = command_parser((module,))
        args = fast_parse(parser, argv)
        if args is not None:
            return args, parser
    parser = command_parser()
    return parser.build().parse_args(argv, namespace=Namespace()), parser


def main(argv: list[str] | None = None) -> None:
    """The ``engctl`` program: runs the command and ends the process (see ``exit_now``).
    To run a command in-process, call ``run``."""
    exit_now(run(argv))


def exit_now(code: int) -> NoReturn:
    """End the process without the interpreter's teardown, which frees every object one by
    one and costs engctl ~1.5 ms at exit, as much as all its own work. engctl registers no
    atexit handlers and has no files open but stdio, flushed here; a reader that went away
    (``engctl ps | head -1``) loses nothing it wanted."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (BrokenPipeError, ValueError):  # ValueError: closed by the command
            pass
    os._exit(code)


def run(argv: list[str] | None = None) -> int:
    args, parser = parse(sys.argv[1:] if argv is None else list(argv))
    if not getattr(args, "func", None):
        parser.print_help()
        return 0 if not args.command else EXIT_ENGINE_ERROR
    ctx = Context(args.host or os.environ.get("ENGINE_HOST") or default_host())
    try:
        code: Any = args.func(ctx, args)
        return int(code or 0)
    except EngineError as e:
        print(f"Error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    finally:
        ctx.close()


if __name__ == "__main__":
    main()
