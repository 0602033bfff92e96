"""engctl build: an image from a Dockerfile (docker build's flags), dockerd's lines."""

from __future__ import annotations

import os
import sys

from engine.cli.main import Context, key_values
from engine.errors import EngineError, InvalidArgument

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from engine.cli.argspec import Namespace


def setup(sub: Any) -> None:
    p = sub.add_parser("build", help="build an image from a Dockerfile")
    p.add_argument("-t", "--tag", action="append", default=[])
    p.add_argument("-f", "--file", default="")
    p.add_argument("--build-arg", action="append", default=[])
    p.add_argument("--label", action="append", default=[])
    p.add_argument("--no-cache", action="store_true")
    p.add_argument("--pull", action="store_true")
    p.add_argument("--target", default="")
    p.add_argument("--network", default="")
    p.add_argument("--platform", default="")
    p.add_argument("-q", "--quiet", action="store_true")
    p.add_argument("context")
    p.set_defaults(func=cmd_build)


def build_args(values: list[str]) -> dict[str, str]:
    """``K=V``, or ``K`` alone: the value from engctl's environment (skipped when unset),
    as docker's CLI does."""
    out: dict[str, str] = {}
    for value in values:
        key, eq, val = value.partition("=")
        if not key:
            raise InvalidArgument(f"invalid --build-arg {value!r}: expected KEY=VALUE")
        if eq:
            out[key] = val
        elif key in os.environ:
            out[key] = os.environ[key]
    return out


def cmd_build(ctx: Context, args: Namespace) -> int:
    if args.context == "-":
        raise InvalidArgument("a build context on stdin is not supported: give a directory")
    context = os.path.abspath(args.context)
    dockerfile = args.file
    if dockerfile and dockerfile != "-":
        dockerfile = os.path.abspath(dockerfile)
    elif dockerfile == "-":
        raise InvalidArgument("a Dockerfile on stdin is not supported: give a path with -f")
    given = {"build_args": build_args(args.build_arg), "labels": key_values(args.label, "--label")}
    stream = ctx.client().stream(  # bad flags are refused before connecting
        "image.build", context=context, dockerfile=dockerfile or "Dockerfile", tags=list(args.tag),
        no_cache=args.no_cache, pull=args.pull, quiet=args.quiet, target=args.target, network=args.network,
        platform=args.platform, **given)
    try:
        for item in stream:
            text = item.get("stream") if isinstance(item, dict) else None
            if text is None and isinstance(item, dict) and item.get("status"):
                text = f"{item['status']}\n"
            if text:
                sys.stdout.write(text)
                sys.stdout.flush()
    except EngineError as e:
        code = e.details.get("code")
        if isinstance(code, int) and code > 0:  # a RUN that failed: its code, as docker's CLI
            print(e.message, file=sys.stderr)
            return code
        raise
    return 0
