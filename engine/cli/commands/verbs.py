"""engctl's everyday container verbs beyond the life cycle, docker-compatible: update, top,
stats, cp, diff, export, commit."""

from __future__ import annotations

import os
import sys

from engine.cli.argspec import REMAINDER
from engine.cli.main import Context
from engine.errors import EngineError, InvalidArgument

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from engine.cli.argspec import Namespace

UPLOAD_CHUNK = 1024 * 1024


def setup(sub: Any) -> None:
    p = sub.add_parser("update", help="change containers' resource limits and restart policy")
    p.add_argument("-m", "--memory", default=None)
    p.add_argument("--memory-swap", default=None)
    p.add_argument("--cpus", type=float, default=None)
    p.add_argument("--pids-limit", type=int, default=None)
    p.add_argument("--restart", default=None)
    p.add_argument("-c", "--cpu-shares", type=int, default=None)
    p.add_argument("--cpuset-cpus", default=None)
    p.add_argument("--cpuset-mems", default=None)
    p.add_argument("containers", nargs="+")
    p.set_defaults(func=cmd_update)

    p = sub.add_parser("top", help="show a container's processes")
    p.add_argument("container")
    p.add_argument("ps_args", nargs=REMAINDER)
    p.set_defaults(func=cmd_top)

    p = sub.add_parser("stats", help="show containers' resource usage")
    p.add_argument("-a", "--all", action="store_true")
    p.add_argument("--no-stream", action="store_true")
    p.add_argument("--no-trunc", action="store_true")
    p.add_argument("--format", default="")
    p.add_argument("containers", nargs="*")
    p.set_defaults(func=cmd_stats)

    p = sub.add_parser("cp", help="copy files between a container and the host (or a tar stream)")
    p.add_argument("-a", "--archive", action="store_true")
    p.add_argument("-L", "--follow-link", action="store_true")
    p.add_argument("-q", "--quiet", action="store_true")
    p.add_argument("source")
    p.add_argument("destination")
    p.set_defaults(func=cmd_cp)

    p = sub.add_parser("diff", help="show a container's changes to its image's filesystem")
    p.add_argument("container")
    p.set_defaults(func=cmd_diff)

    p = sub.add_parser("export", help="write a container's filesystem as a tar archive")
    p.add_argument("-o", "--output", default="")
    p.add_argument("container")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("commit", help="create an image from a container's changes")
    p.add_argument("-a", "--author", default="")
    p.add_argument("-m", "--message", default="")
    p.add_argument("-c", "--change", action="append", default=[])
    p.add_argument("-p", "--pause", default="true", choices=("true", "false"))
    p.add_argument("container")
    p.add_argument("repository", nargs="?", default="")
    p.set_defaults(func=cmd_commit)


# --- update, top, stats -------------------------------------------------------------------------


def cmd_update(ctx: Context, args: Namespace) -> int:
    from engine.cli.commands.containers import parse_bytes

    params: dict[str, Any] = {}
    if args.memory:
        params["memory"] = parse_bytes(args.memory)
    if args.memory_swap is not None:  # docker's: -1 unlimited swap, else memory + swap
        params["memory_swap"] = -1 if args.memory_swap.strip() == "-1" else parse_bytes(args.memory_swap)
    if args.cpus is not None:
        params["cpus"] = args.cpus
    if args.pids_limit is not None:
        params["pids_limit"] = args.pids_limit
    if args.restart is not None:
        params["restart"] = args.restart
    for key in ("cpu_shares", "cpuset_cpus", "cpuset_mems"):
        if getattr(args, key) is not None:
            params[key] = getattr(args, key)
    if not params:
        raise InvalidArgument("nothing to update: give --memory, --memory-swap, --cpus, --cpu-shares, --cpuset-cpus, "
                              "--cpuset-mems, --pids-limit or --restart")
    client = ctx.client()
    failed = False
    for name in args.containers:
        try:
            client.call("container.update", id=name, **params)
            print(name)
        except EngineError as e:
            print(f"Error response from daemon: {e}", file=sys.stderr)
            failed = True
    return 1 if failed else 0


def cmd_top(ctx: Context, args: Namespace) -> int:
    from engine.cli.format import print_table

    result = ctx.client().call("container.top", id=args.container, ps_args=list(args.ps_args))
    print_table(result["Titles"], result["Processes"])
    return 0


def cmd_stats(ctx: Context, args: Namespace) -> int:
    from engine.cli.views import STATS_HEADERS, stats_row

    fmt = args.format or ("table {{.ID}}\t{{.Name}}\t{{.CPUPerc}}\t{{.MemUsage}}\t{{.MemPerc}}\t"
                          "{{.NetIO}}\t{{.BlockIO}}\t{{.PIDs}}")
    params = {"ids": list(args.containers), "all": args.all, "stream": not args.no_stream}
    stream = ctx.client(timeout=None).stream("container.stats", params)
    tty = sys.stdout.isatty() and not args.no_stream
    try:
        for items in stream:
            from engine.cli.template import render_rows

            rows = [stats_row(i, args.no_trunc) for i in items]
            if fmt == "json":
                text = render_rows("{{json .}}", rows)
            else:
                headers = dict(STATS_HEADERS, Name="NAME")
                text = render_rows(fmt, rows, headers)
            if tty:
                sys.stdout.write("\033[2J\033[H")  # docker redraws the screen each tick
            sys.stdout.write(text)
            sys.stdout.flush()
    except KeyboardInterrupt:
        stream.cancel()
    return 0


# --- cp -------------------------------------------------------------------------------------------


def split_container_path(arg: str) -> tuple[str, str] | None:
    """``CONTAINER:PATH`` → (container, path); a local path → None (docker: a path with a
    ``/`` before its first ``:`` is local, ``./a:b`` too)."""
    if arg == "-" or ":" not in arg or arg.startswith(("/", ".")):
        return None
    container, _, path = arg.partition(":")
    if "/" in container:
        return None
    return container, path


def cmd_cp(ctx: Context, args: Namespace) -> int:
    src, dst = split_container_path(args.source), split_container_path(args.destination)
    if (src is None) == (dst is None):
        raise InvalidArgument("copying needs one side in a container (CONTAINER:PATH) and the other "
                              "local (a path, or - for a tar stream)")
    if src is not None:
        return _copy_out(ctx, args, *src)
    assert dst is not None
    return _copy_in(ctx, args, *dst)


def _copy_out(ctx: Context, args: Namespace, container: str, path: str) -> int:
    client = ctx.client(timeout=None)
    stream = client.stream("container.copy_from", id=container, path=path or "/", follow_link=args.follow_link)
    if args.destination == "-":
        out = sys.stdout.buffer
        for item in stream:
            out.write(item["data"])
        out.flush()
        return 0
    import tempfile

    # the tar arrives in full before anything is written: an error leaves nothing half made
    with tempfile.TemporaryFile() as spool:
        for item in stream:
            spool.write(item["data"])
        spool.seek(0)
        _extract_local(spool, stream.result["stat"], path, args.destination, archive=args.archive)
    return 0


def _extract_local(spool: Any, info: dict[str, Any], src_path: str, dest: str, *, archive: bool) -> None:
    """docker's rules for the local side: into ``dest`` when it is a directory (``SRC/.``:
    its contents), else as ``dest``."""
    import tarfile

    contents_only = src_path.endswith("/.") or src_path in ("/", "")
    if os.path.isdir(dest):
        parent, new_top = dest, None if not contents_only else ""
    else:
        if dest.endswith("/") and not info["is_dir"]:
            raise InvalidArgument(f"destination directory {dest} does not exist")
        parent, new_top = os.path.dirname(os.path.abspath(dest)), os.path.basename(dest.rstrip("/"))
        if not os.path.isdir(parent):
            raise InvalidArgument(f"destination directory {parent} does not exist")

    class Local(tarfile.TarFile):
        def chown(self, tarinfo: Any, targetpath: Any, numeric_owner: bool) -> None:
            if archive:  # -a keeps the container's owners; else the files are ours
                super().chown(tarinfo, targetpath, True)

    with Local.open(fileobj=spool, mode="r:") as tar:
        members = []
        for member in tar.getmembers():
            top, _, rest = member.name.partition("/")
            if new_top is not None:
                if new_top == "":
                    if not rest:
                        continue  # the directory itself: its contents go into dest
                    member.name = rest
                else:
                    member.name = new_top + ("/" + rest if rest else "")
            members.append(member)
        tar.extractall(parent, members=members, numeric_owner=True, filter=_keep_modes)


def _keep_modes(member: Any, path: str) -> Any:
    """tarfile's "tar" filter (no absolute names, nothing outside ``path``), but the modes
    stay as the container has them (setuid and group-writable too), as docker's cp."""
    import tarfile

    checked = tarfile.tar_filter(member, path)
    return checked.replace(mode=member.mode, deep=False) if checked is not None else None


def _copy_in(ctx: Context, args: Namespace, container: str, path: str) -> int:
    client = ctx.client(timeout=None)
    upload = client.call("container.upload_begin")["upload"]
    try:
        if args.source == "-":
            _upload(client, upload, sys.stdin.buffer)
        else:
            _upload_path(client, upload, args.source, follow=args.follow_link)
    except BaseException:
        try:
            client.call("container.upload_discard", upload=upload)
        except EngineError:
            pass
        raise
    # docker: from a stream the target must be a directory; from a path it may be renamed
    target = path or "/"
    if args.source != "-" and args.source.endswith("/.") and not target.endswith("/"):
        target += "/"
    client.call("container.copy_to", id=container, path=target, upload=upload, copy_uid_gid=args.archive)
    return 0


def _upload(client: Any, upload: str, source: Any) -> None:
    while chunk := source.read(UPLOAD_CHUNK):
        client.call("container.upload_chunk", upload=upload, data=chunk)


def _upload_path(client: Any, upload: str, source: str, *, follow: bool) -> None:
    """Tar ``source`` (its contents for ``DIR/.``) and send it."""
    import tarfile
    import tempfile

    if not os.path.lexists(source):
        raise InvalidArgument(f"no such file or directory: {source}")
    with tempfile.TemporaryFile() as spool:
        with tarfile.open(fileobj=spool, mode="w", format=tarfile.PAX_FORMAT, dereference=False) as tar:
            real = os.path.realpath(source) if follow else source
            if source.endswith("/.") or source == ".":
                for name in sorted(os.listdir(real)):
                    tar.add(os.path.join(real, name), arcname=name)
            else:
                tar.add(real, arcname=os.path.basename(source.rstrip("/")) or ".")
        spool.seek(0)
        _upload(client, upload, spool)


# --- diff, export, commit ----------------------------------------------------------------------


def cmd_diff(ctx: Context, args: Namespace) -> int:
    kinds = {0: "C", 1: "A", 2: "D"}
    for change in ctx.client().call("container.diff", id=args.container):
        print(f"{kinds.get(change['Kind'], '?')} {change['Path']}")
    return 0


def cmd_export(ctx: Context, args: Namespace) -> int:
    if not args.output and sys.stdout.isatty():
        raise InvalidArgument("refusing to write a tar archive to a terminal: use -o FILE or redirect")
    stream = ctx.client(timeout=None).stream("container.export", id=args.container)
    if not args.output:
        for item in stream:
            sys.stdout.buffer.write(item["data"])
        return 0
    temp = args.output + ".part"
    try:
        with open(temp, "wb") as out:
            for item in stream:
                out.write(item["data"])
        os.replace(temp, args.output)
    finally:
        if os.path.exists(temp):
            os.unlink(temp)
    return 0


def cmd_commit(ctx: Context, args: Namespace) -> int:
    result = ctx.client(timeout=None).call(
        "container.commit", id=args.container, reference=args.repository, message=args.message,
        author=args.author, changes=list(args.change), pause=args.pause == "true")
    print(result["Id"])
    return 0
