"""engctl version | info | events."""

from __future__ import annotations

import os
import sys
import time

from engine.cli.format import print_json
from engine.cli.main import Context, parse_filters, parse_time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from engine.cli.argspec import Namespace


def setup(sub: Any) -> None:
    p = sub.add_parser("version", help="show the engctl and engined versions")
    p.add_argument("-f", "--format", default="", help="json")
    p.set_defaults(func=cmd_version)

    p = sub.add_parser("info", help="show system-wide information")
    p.add_argument("-f", "--format", default="", help="json")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("system", help="manage the daemon's disk: df, prune, check")
    ssub = p.add_subparsers(dest="subcommand", metavar="SUBCOMMAND")
    ps = ssub.add_parser("df", help="show disk usage")
    ps.add_argument("-v", "--verbose", action="store_true")
    ps.add_argument("--format", default="")
    ps.set_defaults(func=cmd_df)
    ps = ssub.add_parser("prune", help="remove unused data")
    ps.add_argument("-a", "--all", action="store_true")
    ps.add_argument("--volumes", action="store_true")
    ps.add_argument("--filter", action="append", default=[])
    ps.add_argument("-f", "--force", action="store_true")
    ps.set_defaults(func=cmd_prune)
    ps = ssub.add_parser("check", help="verify images, containers and volumes on disk")
    ps.add_argument("--repair", action="store_true")
    ps.add_argument("--format", default="")
    ps.set_defaults(func=cmd_check)
    system_parser = p
    p.set_defaults(func=lambda ctx, args: (system_parser.print_help(), 0)[1])

    p = sub.add_parser("events", help="stream events from the daemon")
    p.add_argument("--since", default=None)
    p.add_argument("--until", default=None)
    p.add_argument("-f", "--filter", action="append", default=[])
    p.add_argument("--format", default="")
    p.set_defaults(func=cmd_events)


def cmd_version(ctx: Context, args: Namespace) -> int:
    import engine

    # os.uname() gives what platform.system()/machine() would, without importing platform
    uname = os.uname()
    client_info = {"Version": engine.__version__, "Os": uname.sysname.lower(), "Arch": uname.machine}
    server = ctx.client().call("system.version")
    if args.format == "json":
        print_json({"Client": client_info, "Server": server})
        return 0
    print("Client:")
    print(f" Version:\t{client_info['Version']}")
    print(f" OS/Arch:\t{client_info['Os']}/{client_info['Arch']}")
    print()
    print("Server: engine")
    print(f" Version:\t{server['Version']}")
    print(f" API version:\t{server['ApiVersion']}")
    print(f" OS/Arch:\t{server['Os']}/{server['Arch']}")
    print(f" Kernel:\t{server['KernelVersion']}")
    print(f" Python:\t{server['PythonVersion']}")
    return 0


def cmd_info(ctx: Context, args: Namespace) -> int:
    info = ctx.client().call("system.info")
    if args.format == "json":
        print_json(info)
        return 0
    print(f"Server Version: {info['Version']}")
    print(f"Containers: {info['Containers']} (running: {info['ContainersRunning']})")
    print(f"Images: {info['Images']}")
    print(f"Storage Driver: {info['StorageDriver']}")
    print(f"Default Runtime: {info['DefaultRuntime']}")
    print("Runtimes:")
    for r in info["Runtimes"]:
        state = "available" if r["available"] else f"UNAVAILABLE: {r['reason']}"
        print(f"  {r['name']}: {state}")
    print("Storage Drivers:")
    for d in info["StorageDrivers"]:
        state = "available" if d["available"] else f"UNAVAILABLE: {d['reason']}"
        print(f"  {d['name']}: {state}")
    print("Volume Drivers:")
    for d in info.get("VolumeDrivers", []):
        state = "available" if d["available"] else f"UNAVAILABLE: {d['reason']}"
        print(f"  {d['name']}: {state}")
    plugins = info["Plugins"]
    print(f"Plugins: {', '.join(plugins['loaded']) or 'none'}")
    for name, error in plugins["failed"].items():
        print(f"  {name}: FAILED: {error}")
    print(f"Root Dir: {info['Root']}")
    print(f"Run Root: {info['RunRoot']}")
    print(f"Kernel Version: {info['Kernel']}")
    print(f"CPUs: {info['NCPU']}")
    return 0


def cmd_df(ctx: Context, args: Namespace) -> int:
    from engine.cli.format import print_table
    from engine.humanize import human_size

    usage = ctx.client().call("system.df")
    if args.format == "json":
        print_json(usage)
        return 0

    def reclaim(row: dict[str, Any]) -> str:
        pct = f" ({100 * row['Reclaimable'] // row['Size']}%)" if row["Size"] else ""
        return human_size(row["Reclaimable"]) + pct

    print_table(["TYPE", "TOTAL", "ACTIVE", "SIZE", "RECLAIMABLE"],
                [[r["Type"], r["TotalCount"], r["Active"], human_size(r["Size"]), reclaim(r)]
                 for r in usage["Summary"]])
    if not args.verbose:
        return 0
    print("\nImages space usage:\n")
    print_table(["REPOSITORY:TAG", "IMAGE ID", "SIZE", "SHARED SIZE", "UNIQUE SIZE", "CONTAINERS"],
                [[", ".join(i["RepoTags"]) or "<none>", i["Id"].removeprefix("sha256:")[:12],
                  human_size(i["Size"]), human_size(i["SharedSize"]), human_size(i["UniqueSize"]),
                  i["Containers"]] for i in usage["Images"]])
    print("\nContainers space usage:\n")
    print_table(["CONTAINER ID", "IMAGE", "SIZE", "STATUS", "NAMES"],
                [[c["Id"][:12], c["Image"], human_size(c["SizeRw"]), c["State"], ", ".join(c["Names"])]
                 for c in usage["Containers"]])
    print("\nLocal Volumes space usage:\n")
    print_table(["VOLUME NAME", "LINKS", "SIZE"],
                [[v["Name"], v["UsageData"]["RefCount"], human_size(max(v["UsageData"]["Size"], 0))]
                 for v in usage["Volumes"]])
    return 0


def cmd_prune(ctx: Context, args: Namespace) -> int:
    from engine.humanize import human_size

    if not args.force:
        what = ["all stopped containers", "all networks not used by at least one container"]
        if args.volumes:
            what.append("all anonymous volumes not used by at least one container")
        what.append("all images without at least one container associated to them" if args.all
                    else "all dangling images")
        sys.stdout.write("WARNING! This will remove:\n" + "".join(f"  - {w}\n" for w in what)
                         + "\nAre you sure you want to continue? [y/N] ")
        sys.stdout.flush()
        if sys.stdin.readline().strip().lower() not in ("y", "yes"):
            return 0
    result = ctx.client(timeout=None).call("system.prune", all=args.all, volumes=args.volumes,
                                           filters=parse_filters(args.filter))
    for key, title in (("ContainersDeleted", "Deleted Containers"), ("NetworksDeleted", "Deleted Networks"),
                       ("VolumesDeleted", "Deleted Volumes")):
        if result.get(key):
            print(f"{title}:")
            for item in result[key]:
                print(item)
            print()
    if result.get("ImagesDeleted"):
        print("Deleted Images:")
        for entry in result["ImagesDeleted"]:
            for key, value in entry.items():
                print(f"{key.lower()}: {value}")
        print()
    print(f"Total reclaimed space: {human_size(result.get('SpaceReclaimed', 0))}")
    return 0


def cmd_check(ctx: Context, args: Namespace) -> int:
    report = ctx.client(timeout=None).call("system.check", repair=args.repair)
    if args.format == "json":
        print_json(report)
        return 0 if report["Clean"] or report.get("Repaired") else 1
    checked = ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in report["Checked"].items())
    print(f"Checked {checked}.")
    if report["Clean"]:
        print("No problems found.")
        return 0
    for p in report["Problems"]:
        state = ("repaired: " if p["Repaired"] else "NOT repaired: ") if args.repair else "repair would "
        print(f"{p['Kind']} {p['Object']}: {p['Problem']}")
        if p["Repair"]:
            print(f"    {state}{p['Repair']}")
    if not args.repair:
        print("Run `engctl system check --repair` to mend these.")
        return 1
    return 0 if report.get("Repaired") else 1


def cmd_events(ctx: Context, args: Namespace) -> int:
    params: dict[str, Any] = {"filters": parse_filters(args.filter)}
    if args.since:
        params["since"] = parse_time(args.since)
    if args.until:
        params["until"] = parse_time(args.until)
    stream = ctx.client(timeout=None).stream("system.events", params)
    import json
    try:
        for event in stream:
            if args.format == "json":
                sys.stdout.write(json.dumps(event) + "\n")
            else:
                stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(event["time"]))
                attrs = ", ".join(f"{k}={v}" for k, v in sorted(event["Actor"]["Attributes"].items())
                                  if not isinstance(v, dict | list))
                sys.stdout.write(f"{stamp} {event['Type']} {event['Action']} {event['Actor']['ID']} ({attrs})\n")
            sys.stdout.flush()
    except KeyboardInterrupt:
        stream.cancel()
    return 0
