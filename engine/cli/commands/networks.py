"""engctl network verbs: create, ls, inspect, rm, connect, disconnect, prune (docker's)."""

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
    p = sub.add_parser("network", help="manage networks")
    nsub = p.add_subparsers(dest="subcommand", metavar="SUBCOMMAND")

    pc = nsub.add_parser("create", help="create a network")
    pc.add_argument("-d", "--driver", default="bridge")
    pc.add_argument("--subnet", default="")
    pc.add_argument("--gateway", default="")
    pc.add_argument("--internal", action="store_true")
    pc.add_argument("--label", action="append", default=[])
    pc.add_argument("-o", "--opt", action="append", default=[])
    pc.add_argument("--ip-range", default="")
    pc.add_argument("--aux-address", action="append", default=[])
    pc.add_argument("name")
    pc.set_defaults(func=cmd_create)

    for name in ("ls", "list"):
        pl = nsub.add_parser(name, help="list networks")
        pl.add_argument("-q", "--quiet", action="store_true")
        pl.add_argument("-f", "--filter", action="append", default=[])
        pl.add_argument("--no-trunc", action="store_true")
        pl.add_argument("--format", default="")
        pl.set_defaults(func=cmd_ls)

    pi = nsub.add_parser("inspect", help="low-level information on networks")
    pi.add_argument("-f", "--format", default="")
    pi.add_argument("networks", nargs="+")
    pi.set_defaults(func=cmd_inspect)

    for name in ("rm", "remove"):
        pr = nsub.add_parser(name, help="remove networks")
        pr.add_argument("networks", nargs="+")
        pr.set_defaults(func=cmd_rm)

    pcon = nsub.add_parser("connect", help="connect a container to a network")
    pcon.add_argument("--alias", action="append", default=[])
    pcon.add_argument("--ip", default="")
    pcon.add_argument("network")
    pcon.add_argument("container")
    pcon.set_defaults(func=cmd_connect)

    pdis = nsub.add_parser("disconnect", help="disconnect a container from a network")
    pdis.add_argument("-f", "--force", action="store_true")
    pdis.add_argument("network")
    pdis.add_argument("container")
    pdis.set_defaults(func=cmd_disconnect)

    pp = nsub.add_parser("prune", help="remove networks no container uses")
    pp.add_argument("-f", "--force", action="store_true")
    pp.add_argument("--filter", action="append", default=[])
    pp.set_defaults(func=cmd_prune)

    p.set_defaults(func=lambda ctx, args: _usage(p))


def _usage(parser: Parser) -> int:
    parser.print_help()
    return 0


def cmd_create(ctx: Context, args: Namespace) -> int:
    params = {
        "name": args.name, "driver": args.driver, "subnet": args.subnet,
        "gateway": args.gateway, "internal": args.internal, "labels": key_values(args.label, "--label"),
    }
    if args.opt:
        params["options"] = key_values(args.opt, "--opt", value_required=True)
    if args.ip_range:
        params["ip_range"] = args.ip_range
    if args.aux_address:
        params["aux_addresses"] = key_values(args.aux_address, "--aux-address", value_required=True)
    result = ctx.client().call("network.create", params)
    print(result["Id"])
    return 0


def cmd_ls(ctx: Context, args: Namespace) -> int:
    rows = ctx.client().call("network.list", filters=parse_filters(args.filter))
    if args.quiet:
        for r in rows:
            print(r["Id"] if args.no_trunc else r["Id"][:12])
        return 0
    if args.format == "json":
        print_json(rows)
        return 0
    if args.format:
        for r in rows:
            print(format_path(r, args.format))
        return 0
    print_table(
        ["NETWORK ID", "NAME", "DRIVER", "SCOPE"],
        [[r["Id"] if args.no_trunc else r["Id"][:12], r["Name"], r["Driver"], r["Scope"]] for r in rows],
    )
    return 0


def cmd_inspect(ctx: Context, args: Namespace) -> int:
    client = ctx.client()
    return inspect_each(args.networks, lambda ref: client.call("network.inspect", id=ref), args.format)


def cmd_rm(ctx: Context, args: Namespace) -> int:
    client = ctx.client()
    failed = False
    for ref in args.networks:
        try:
            client.call("network.remove", id=ref)
            print(ref)
        except EngineError as e:
            print(f"Error: {e}", file=sys.stderr)
            failed = True
    return 1 if failed else 0


def cmd_connect(ctx: Context, args: Namespace) -> int:
    params = {"network": args.network, "container": args.container, "aliases": list(args.alias)}
    if args.ip:
        params["ip"] = args.ip
    ctx.client().call("network.connect", **params)
    return 0


def cmd_disconnect(ctx: Context, args: Namespace) -> int:
    ctx.client().call("network.disconnect", network=args.network, container=args.container,
                      force=args.force)
    return 0


def cmd_prune(ctx: Context, args: Namespace) -> int:
    if not args.force:
        sys.stdout.write("WARNING! This will remove all custom networks not used by at least "
                         "one container.\nAre you sure you want to continue? [y/N] ")
        sys.stdout.flush()
        if sys.stdin.readline().strip().lower() not in ("y", "yes"):
            return 0
    result = ctx.client().call("network.prune", filters=parse_filters(args.filter))
    deleted = result.get("NetworksDeleted") or []
    if deleted:
        print("Deleted Networks:")
        for name in deleted:
            print(name)
    return 0
