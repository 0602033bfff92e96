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
