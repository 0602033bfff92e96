"""engctl image verbs: pull, push, images, rmi, tag, load, save, import, history,
image inspect|prune|ls|rm, login, logout."""

from __future__ import annotations

import os
import sys
import time

from engine.cli.format import inspect_each, print_formatted, print_json, print_table
from engine.cli.main import Context, parse_filters
from engine.errors import EngineError, InvalidArgument
from engine.humanize import human_duration, human_size

# engctl run imports this module to pull a missing image: keep its imports light.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, TextIO

    from engine.cli.argspec import Namespace, Parser


def setup(sub: Any) -> None:
    p = sub.add_parser("pull", help="pull an image from a registry")
    p.add_argument("--platform", default="")
    p.add_argument("-q", "--quiet", action="store_true")
    p.add_argument("reference")
    p.set_defaults(func=cmd_pull)

    p = sub.add_parser("push", help="push an image to a registry")
    p.add_argument("-q", "--quiet", action="store_true")
    p.add_argument("reference")
    p.set_defaults(func=cmd_push)

    p = sub.add_parser("images", help="list images")
    add_list_flags(p)
    p.set_defaults(func=cmd_images)

    p = sub.add_parser("rmi", help="remove images")
    p.add_argument("-f", "--force", action="store_true")
    p.add_argument("images", nargs="+")
    p.set_defaults(func=cmd_rmi)

    p = sub.add_parser("tag", help="create a tag TARGET that refers to SOURCE")
    p.add_argument("source")
    p.add_argument("target")
    p.set_defaults(func=cmd_tag)

    p = sub.add_parser("load", help="load images from a docker-archive tar or an OCI layout")
    p.add_argument("-i", "--input", required=True)
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=cmd_load)

    p = sub.add_parser("save", help="save images to a docker-archive tar (or an OCI layout)")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--format", default="docker-archive", choices=("docker-archive", "oci", "oci-archive"))
    p.add_argument("images", nargs="+")
    p.set_defaults(func=cmd_save)

    p = sub.add_parser("import", help="import a root filesystem tarball as an image")
    p.add_argument("-c", "--change", action="append", default=[])
    p.add_argument("-m", "--message", default="")
    p.add_argument("file")
    p.add_argument("reference", nargs="?", default="")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("history", help="show an image's history")
    p.add_argument("--no-trunc", action="store_true")
    p.add_argument("-q", "--quiet", action="store_true")
    p.add_argument("--format", default="")
    p.add_argument("image")
    p.set_defaults(func=cmd_history)

    p = sub.add_parser("image", help="manage images")
    isub = p.add_subparsers(dest="subcommand", metavar="SUBCOMMAND")
    pi = isub.add_parser("inspect", help="low-level information on images")
    pi.add_argument("-f", "--format", default="")
    pi.add_argument("images", nargs="+")
    pi.set_defaults(func=cmd_image_inspect)
    pp = isub.add_parser("prune", help="remove unused images")
    pp.add_argument("-a", "--all", action="store_true")
    pp.add_argument("-f", "--force", action="store_true")
    pp.add_argument("--filter", action="append", default=[])
    pp.set_defaults(func=cmd_image_prune)
    for name in ("ls", "list"):
        pl = isub.add_parser(name, help="list images")
        add_list_flags(pl)
        pl.set_defaults(func=cmd_images)
    pr = isub.add_parser("rm", help="remove images")
    pr.add_argument("-f", "--force", action="store_true")
    pr.add_argument("images", nargs="+")
    pr.set_defaults(func=cmd_rmi)
    for name, func in (("pull", cmd_pull), ("push", cmd_push)):
        px = isub.add_parser(name)
        px.add_argument("-q", "--quiet", action="store_true")
        px.add_argument("--platform", default="")
        px.add_argument("reference")
        px.set_defaults(func=func)

    p = sub.add_parser("login", help="log in to a registry")
    p.add_argument("-u", "--username", default="")
    p.add_argument("-p", "--password", default="")
    p.add_argument("--password-stdin", action="store_true")
    p.add_argument("server")
    p.set_defaults(func=cmd_login)

    p = sub.add_parser("logout", help="log out from a registry")
    p.add_argument("server")
    p.set_defaults(func=cmd_logout)


def add_list_flags(p: Parser) -> None:
    p.add_argument("-a", "--all", action="store_true")
    p.add_argument("-q", "--quiet", action="store_true")
    p.add_argument("--digests", action="store_true")
    p.add_argument("--no-trunc", action="store_true")
    p.add_argument("-f", "--filter", action="append", default=[])
    p.add_argument("--format", default="")
    p.add_argument("repository", nargs="?")


class ProgressView:
    """docker-style progress of a pull or push.

    On a terminal: one line per layer, redrawn in place (cursor up, clear line) with a bar
    while bytes arrive. Otherwise (a pipe, a log file): one plain line per state change of a
    layer, never one per chunk, so logs stay readable."""

    BAR_WIDTH = 40

    def __init__(self, out: TextIO, quiet: bool = False) -> None:
        self.out = out
        self.quiet = quiet
        self.tty = _isatty(out)
        self.order: list[str] = []  # keys of the redrawn block, top to bottom
        self.lines: dict[str, str] = {}
        self.last_status: dict[str, str] = {}
        self.drawn = 0  # lines of the block currently on screen

    def update(self, event: dict[str, Any]) -> None:
        if self.quiet:
            return
        key = str(event.get("id") or "")
        if self.tty:
            self._update_tty(key, event)
        else:
            self._update_plain(key, event)

    def _update_tty(self, key: str, event: dict[str, Any]) -> None:
        if not key:  # a message without a layer: a fixed line of the block
            key = f"#{len(self.order)}"
        if key not in self.lines:
            self.order.append(key)
        self.lines[key] = _line(event) + self._bar(event)
        self._redraw()

    def _update_plain(self, key: str, event: dict[str, Any]) -> None:
        status = str(event.get("status", ""))
        if key and self.last_status.get(key) == status:
            return  # one line per state change, not per chunk
        self.last_status[key] = status
        self.out.write(_line(event) + "\n")
        self.out.flush()

    def _bar(self, event: dict[str, Any]) -> str:
        current, total = event.get("current"), event.get("total")
        if current is None or not total:
            return ""
        filled = int(self.BAR_WIDTH * min(current, total) / total)
        arrow = ">" if filled < self.BAR_WIDTH else "="
        body = "=" * max(0, filled - 1) + (arrow if filled else "")
        return (
            f" [{body.ljust(self.BAR_WIDTH)}] {human_size(current)}/{human_size(total)}"
        )

    def _redraw(self) -> None:
        if self.drawn:
            self.out.write(f"\x1b[{self.drawn}A")  # back to the block's first line
        for key in self.order:
            self.out.write("\x1b[2K" + self.lines[key] + "\n")
        self.drawn = len(self.order)
        self.out.flush()


def _isatty(out: TextIO) -> bool:
    try:
        return bool(out.isatty())
    except (AttributeError, ValueError):
        return False


def _line(event: dict[str, Any]) -> str:
    key, status = event.get("id"), str(event.get("status", ""))
    line = f"{key}: {status}" if key else status
    if event.get("digest"):
        line += f" {event['digest']}"
    return line


def pull_image(ctx: Context, reference: str, *, platform: str = "", quiet: bool = False,
               out: TextIO = sys.stdout) -> dict[str, Any]:
    """Pull through the daemon, showing progress on ``out``; returns the daemon's result.
    Also used by ``engctl run``/``create`` when the image is missing."""
    view = ProgressView(out, quiet)
    stream = ctx.client().stream("image.pull", reference=reference, platform=platform)
    for event in stream:
        view.update(event)
    result: dict[str, Any] = stream.result
    if not quiet:
        status = (
            f"Image is up to date for {result['Reference']}"
            if result.get("Status") == "up to date"
            else f"Downloaded newer image for {result['Reference']}"
        )
        out.write(f"Digest: {result['Digest']}\nStatus: {status}\n")
        out.flush()
    return result


def cmd_pull(ctx: Context, args: Namespace) -> int:
    result = pull_image(ctx, args.reference, platform=getattr(args, "platform", ""),
                        quiet=args.quiet)
    if args.quiet:
        print(result["Reference"])
    return 0


def cmd_push(ctx: Context, args: Namespace) -> int:
    view = ProgressView(sys.stdout, args.quiet)
    stream = ctx.client().stream("image.push", reference=args.reference)
    for event in stream:
        view.update(event)
    result = stream.result
    if args.quiet:
        print(result["Reference"])
    else:
        print(f"{result['Reference']}: digest: {result['Digest']}")
    return 0


def cmd_images(ctx: Context, args: Namespace) -> int:
    filters = parse_filters(args.filter)
    if args.repository:
        filters.setdefault("reference", []).append(args.repository)
    rows = ctx.client().call("image.list", all=args.all, filters=filters)
    if args.format == "json":
        print_json(rows)
        return 0
    if args.format:
        from engine.cli.views import IMAGE_HEADERS, image_rows

        view = [row for r in rows for row in image_rows(r, args.no_trunc, _created(r["Created"]))]
        print_formatted(args.format, view, IMAGE_HEADERS)
        return 0
    if args.quiet:
        seen = []
        for r in rows:
            short = r["Id"] if args.no_trunc else r["Id"].removeprefix("sha256:")[:12]
            if short not in seen:
                seen.append(short)
                print(short)
        return 0
    table = []
    for r in rows:
        image_id = r["Id"] if args.no_trunc else r["Id"].removeprefix("sha256:")[:12]
        names = r["RepoTags"] or ["<none>:<none>"]
        for name in names:
            repo, _, tag = name.rpartition(":") if ":" in name.rsplit("/", 1)[-1] else (name, "", "<none>")
            digest = next((d.rpartition("@")[2] for d in r["RepoDigests"] if d.startswith(repo + "@")), "<none>")
            row = [repo, tag]
            if args.digests:
                row.append(digest)
            row += [image_id, _created(r["Created"]), human_size(r["Size"])]
            table.append(row)
    headers = ["REPOSITORY", "TAG"] + (["DIGEST"] if args.digests else []) + ["IMAGE ID", "CREATED", "SIZE"]
    print_table(headers, table)
    return 0


def _created(created: str) -> str:
    """``2024-01-01T00:00:00.123456789Z`` -> ``2 years ago`` (docker's CREATED column)."""
    stamp = _parse_rfc3339(created)
    if stamp is None:
        return created or "N/A"
    return f"{human_duration(time.time() - stamp)} ago"


_RFC3339 = r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)?$"


def _parse_rfc3339(text: str) -> float | None:
    import re
    from datetime import datetime

    # Go writes nanoseconds, which fromisoformat (3.11) refuses: keep microseconds.
    match = re.match(_RFC3339, text or "")
    if match is None:
        return None
    base, fraction, zone = match.groups()
    zone = "+00:00" if zone in (None, "Z") else zone
    try:
        return datetime.fromisoformat(base + (fraction or "")[:7] + zone).timestamp()
    except ValueError:
        return None


def cmd_rmi(ctx: Context, args: Namespace) -> int:
    client = ctx.client()
    failed = False
    for image in args.images:
        try:
            for entry in client.call("image.remove", id=image, force=args.force) or []:
                for key, value in entry.items():
                    print(f"{key}: {value}")
        except EngineError as e:
            print(f"Error: {e}", file=sys.stderr)
            failed = True
    return 1 if failed else 0


def cmd_tag(ctx: Context, args: Namespace) -> int:
    ctx.client().call("image.tag", source=args.source, target=args.target)
    return 0


def _abs(path: str) -> str:
    return os.path.abspath(path)


def cmd_load(ctx: Context, args: Namespace) -> int:
    result = ctx.client(timeout=None).call("image.load", path=_abs(args.input))
    for image in result["Images"]:
        names = image["RepoTags"] or [image["Id"]]
        for name in names:
            print(f"Loaded image: {name}" if image["RepoTags"] else f"Loaded image ID: {name}")
    return 0


def cmd_save(ctx: Context, args: Namespace) -> int:
    ctx.client(timeout=None).call("image.save", images=args.images, path=_abs(args.output), format=args.format)
    return 0


def cmd_import(ctx: Context, args: Namespace) -> int:
    if args.file == "-":
        raise InvalidArgument("import from stdin is not supported; give a file path")
    result = ctx.client(timeout=None).call("image.import", path=_abs(args.file), reference=args.reference,
                                           changes=args.change, message=args.message)
    print(result["Id"])
    return 0


def cmd_history(ctx: Context, args: Namespace) -> int:
    rows = ctx.client().call("image.history", id=args.image)
    if args.format == "json":
        print_json(rows)
        return 0
    if args.quiet:
        for r in rows:
            print(r.get("Id", "<missing>"))
        return 0
    print_table(["IMAGE", "CREATED", "CREATED BY", "SIZE", "COMMENT"], [
        [
            _history_id(r.get("Id") or "<missing>", args.no_trunc),
            _created(str(r.get("Created", ""))),
            (r.get("CreatedBy") or "")[: None if args.no_trunc else 45],
            human_size(r.get("Size", 0)),
            r.get("Comment", ""),
        ]
        for r in rows
    ])
    return 0


def _history_id(image_id: str, no_trunc: bool) -> str:
    if no_trunc or not image_id.startswith("sha256:"):
        return image_id
    return image_id.removeprefix("sha256:")[:12]


def cmd_image_inspect(ctx: Context, args: Namespace) -> int:
    client = ctx.client()
    return inspect_each(args.images, lambda ref: client.call("image.inspect", id=ref), args.format)


def cmd_image_prune(ctx: Context, args: Namespace) -> int:
    from engine.cli.main import parse_filters

    result = ctx.client().call("image.prune", all=args.all, filters=parse_filters(args.filter))
    for entry in result.get("ImagesDeleted") or result.get("deleted") or []:
        for key, value in entry.items():
            print(f"{key}: {value}")
    reclaimed = result.get("SpaceReclaimed", result.get("reclaimed", 0))
    print(f"Total reclaimed space: {human_size(reclaimed)}")
    return 0


def cmd_login(ctx: Context, args: Namespace) -> int:
    username = args.username or input("Username: ")
    if args.password_stdin:
        password = sys.stdin.read().rstrip("\n")
    else:
        import getpass

        password = args.password or getpass.getpass("Password: ")
    if not username or not password:
        raise InvalidArgument("a username and a password are required")
    result = ctx.client().call("registry.login", server=args.server, username=username, password=password)
    print(result["Status"])
    return 0


def cmd_logout(ctx: Context, args: Namespace) -> int:
    result = ctx.client().call("registry.logout", server=args.server)
    print(f"Removing login credentials for {args.server}" if result["Removed"] else f"Not logged in to {args.server}")
    return 0
