"""engctl volume verbs: create, ls, inspect, rm, prune (docker's)."""

from __future__ import annotations

import sys

from engine.cli.format import format_path, inspect_each, print_json, print_table
from engine.cli.main import Context, key_values, parse_filters
from engine.errors import EngineError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from engine.cli.argspec import Namespace, Parser


def setup(sub: Any) -> None:
    p = sub.add_parser("volume", help="manage volumes")
    vsub = p.add_subparsers(dest="subcommand", metavar="SUBCOMMAND")

    pc = vsub.add_parser("create", help="create a volume")
    pc.add_argument("-d", "--driver", default="local")
    pc.add_argument("-o", "--opt", action="append", default=[])
    pc.add_argument("--label", action="append", default=[])
    pc.add_argument("name", nargs="?", default="")
    pc.set_defaults(func=cmd_create)

    for name in ("ls", "list"):
        pl = vsub.add_parser(name, help="list volumes")
        pl.add_argument("-q", "--quiet", action="store_true")
        pl.add_argument("-f", "--filter", action="append", default=[])
        pl.add_argument("--format", default="")
        pl.set_defaults(func=cmd_ls)

    pi = vsub.add_parser("inspect", help="low-level information on volumes")
    pi.add_argument("-f", "--format", default="")
    pi.add_argument("volumes", nargs="+")
    pi.set_defaults(func=cmd_inspect)

    for name in ("rm", "remove"):
        pr = vsub.add_parser(name, help="remove volumes")
        pr.add_argument("-f", "--force", action="store_true")
        pr.add_argument("volumes", nargs="+")
        pr.set_defaults(func=cmd_rm)

    pp = vsub.add_parser("prune", help="remove volumes no container uses")
    pp.add_argument("-a", "--all", action="store_true")
    pp.add_argument("--filter", action="append", default=[])
    pp.add_argument("-f", "--force", action="store_true")
    pp.set_defaults(func=cmd_prune)

    p.set_defaults(func=lambda ctx, args: _usage(p))


def _usage(parser: Parser) -> int:
    parser.print_help()
    return 0


def cmd_create(ctx: Context, args: Namespace) -> int:
    params = {"name": args.name, "driver": args.driver,
              "options": key_values(args.opt, "--opt", value_required=True),
              "labels": key_values(args.label, "--label")}
    result = ctx.client().call("volume.create", params)  # bad flags are refused before connecting
    print(result["Name"])
    return 0


def cmd_ls(ctx: Context, args: Namespace) -> int:
    result = ctx.client().call("volume.list", filters=parse_filters(args.filter))
    rows = result["Volumes"]
    for warning in result.get("Warnings") or []:
        print(f"WARNING: {warning}", file=sys.stderr)
    if args.quiet:
        for r in rows:
            print(r["Name"])
        return 0
    if args.format == "json":
        print_json(rows)
        return 0
    if args.format:
        for r in rows:
            print(format_path(r, args.format))
        return 0
    print_table(["DRIVER", "VOLUME NAME"], [[r["Driver"], r["Name"]] for r in rows])
    return 0


def cmd_inspect(ctx: Context, args: Namespace) -> int:
    client = ctx.client()
    return inspect_each(args.volumes, lambda ref: client.call("volume.inspect", name=ref), args.format)


def cmd_rm(ctx: Context, args: Namespace) -> int:
    client = ctx.client()
    failed = False
    for name in args.volumes:
        try:
            client.call("volume.remove", name=name, force=args.force)
            print(name)
        except EngineError as e:
            print(f"Error: {e}", file=sys.stderr)
            failed = True
    return 1 if failed else 0


def cmd_prune(ctx: Context, args: Namespace) -> int:
    if not args.force:
        what = "all volumes" if args.all else "all anonymous volumes"
        sys.stdout.write(f"WARNING! This will remove {what} not used by at least one container.\n"
                         "Are you sure you want to continue? [y/N] ")
        sys.stdout.flush()
        if sys.stdin.readline().strip().lower() not in ("y", "yes"):
            return 0
    result = ctx.client().call("volume.prune", filters=parse_filters(args.filter), all=args.all)
    deleted = result.get("VolumesDeleted") or []
    if deleted:
        print("Deleted Volumes:")
        for name in deleted:
            print(name)
    from engine.humanize import human_size

    print(f"Total reclaimed space: {human_size(result.get('SpaceReclaimed', 0))}")
    return 0
