"""engctl container verbs, docker-compatible: run, create, start, stop, restart, kill, pause,
unpause, rm, ps, inspect, logs, wait, exec, rename, container prune, port, attach.
Sessions with stdin or a terminal (-i, -t, attach) go through engine.cli.interactive."""

from __future__ import annotations

import sys
import time

from engine.cli.argspec import REMAINDER
from engine.cli.format import format_path, print_formatted, print_json, print_table
from engine.cli.main import Context, parse_filters, parse_time
from engine.errors import EngineError, InvalidArgument, NotFound

# Imported for annotations only: typing alone costs engctl milliseconds at start-up.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from engine.cli.argspec import Namespace, Parser


def parse_bytes(text: str) -> int:
    import re  # only --memory needs it

    m = re.match(r"^(\d+(?:\.\d+)?)([bkmg]?)b?$", text.strip(), re.IGNORECASE)
    if not m:
        raise InvalidArgument(f"invalid size {text!r}: use a number with an optional unit b, k, m, g (e.g. 64m)")
    factor = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[m.group(2).lower()]
    return int(float(m.group(1)) * factor)


# The daemon's bound (engine.supervisor.container_service.MAX_STOP_TIMEOUT), repeated here so
# that a bad -t is a usage error before any connection (importing the daemon side costs
# engctl its start-up budget).
MAX_STOP_SECONDS = 10 * 365 * 24 * 3600


def stop_seconds(text: str) -> int:
    """docker's ``stop -t`` / ``--stop-timeout``: whole seconds, -1 waits for ever."""
    try:
        seconds = int(text.strip())
    except ValueError:
        seconds = None
    if seconds is not None and -1 <= seconds <= MAX_STOP_SECONDS:
        return seconds
    import argparse  # an error path: argparse prints the message and exits 125

    class BadSeconds(argparse.ArgumentTypeError, ValueError):
        """ValueError for the fast parser (it hands over to argparse), ArgumentTypeError
        so that argparse shows this message rather than "invalid value"."""

    raise BadSeconds(f"invalid timeout {text!r}: use whole seconds from 0 to "
                     f"{MAX_STOP_SECONDS}, or -1 to wait for ever")


def add_create_flags(p: Parser) -> None:
    p.add_argument("--name", default="")
    p.add_argument("-e", "--env", action="append", default=[])
    p.add_argument("--env-file", action="append", default=[])
    p.add_argument("-v", "--volume", action="append", default=[])
    p.add_argument("--tmpfs", action="append", default=[])
    p.add_argument("--mount", action="append", default=[])
    p.add_argument("--volumes-from", action="append", default=[])
    p.add_argument("--log-driver", default="")
    p.add_argument("--log-opt", action="append", default=[])
    p.add_argument("-w", "--workdir", default="")
    p.add_argument("-u", "--user", default="")
    p.add_argument("-h", "--hostname", default="")
    p.add_argument("--domainname", default="")
    p.add_argument("--entrypoint", default=None)
    p.add_argument("--read-only", action="store_true")
    p.add_argument("--init", action="store_true")
    p.add_argument("-m", "--memory", default=None)
    p.add_argument("--cpus", type=float, default=None)
    p.add_argument("-c", "--cpu-shares", type=int, default=None)
    p.add_argument("--cpuset-cpus", default="")
    p.add_argument("--cpuset-mems", default="")
    p.add_argument("--pids-limit", type=int, default=None)
    p.add_argument("--restart", default="no")
    p.add_argument("--rm", action="store_true")
    p.add_argument("-l", "--label", action="append", default=[])
    p.add_argument("--runtime", default="")
    p.add_argument("--stop-signal", default="")
    p.add_argument("--stop-timeout", type=stop_seconds, default=None)
    p.add_argument("--network", "--net", default="")
    p.add_argument("--network-alias", action="append", default=[])
    p.add_argument("--ip", default="")
    p.add_argument("--mac-address", default="")
    p.add_argument("-p", "--publish", action="append", default=[])
    p.add_argument("-P", "--publish-all", action="store_true")
    p.add_argument("--expose", action="append", default=[])
    p.add_argument("--dns", action="append", default=[])
    p.add_argument("--dns-search", action="append", default=[])
    p.add_argument("--dns-option", "--dns-opt", action="append", default=[])
    p.add_argument("--add-host", action="append", default=[])
    p.add_argument("--cap-add", action="append", default=[])
    p.add_argument("--cap-drop", action="append", default=[])
    p.add_argument("--platform", default="")
    p.add_argument("--pull", default="missing", choices=("missing", "always", "never"))
    p.add_argument("--health-cmd", default="")
    p.add_argument("--health-interval", default=None)
    p.add_argument("--health-timeout", default=None)
    p.add_argument("--health-start-period", default=None)
    p.add_argument("--health-retries", type=int, default=None)
    p.add_argument("--no-healthcheck", action="store_true")
    p.add_argument("-q", "--quiet", action="store_true")
    add_host_flags(p)
    p.add_argument("image")
    p.add_argument("command", nargs=REMAINDER)


def create_params(args: Namespace) -> dict[str, Any]:
    env = list(args.env)
    for path in args.env_file:
        with open(path) as f:
            env += [line.strip() for line in f if line.strip() and not line.startswith("#")]
    import os

    env = [e if "=" in e else f"{e}={os.environ.get(e, '')}" for e in env]
    labels = {}
    for item in args.label:
        k, _, v = item.partition("=")
        labels[k] = v
    params: dict[str, Any] = {
        "image": args.image,
        "name": args.name,
        "env": env,
        "volumes": args.volume,
        "tmpfs": args.tmpfs,
        "workdir": args.workdir,
        "user": args.user,
        "hostname": args.hostname,
        "domainname": args.domainname,
        "read_only": args.read_only,
        "init": args.init,
        "restart": args.restart,
        "auto_remove": args.rm,
        "labels": labels,
        "runtime": args.runtime,
        "stop_signal": args.stop_signal,
        "network": args.network,
        "network_aliases": args.network_alias,
        "publish": args.publish,
        "publish_all": args.publish_all,
        "expose": args.expose,
        "dns": args.dns,
        "dns_search": args.dns_search,
        "dns_options": args.dns_option,
        "add_hosts": args.add_host,
        "cap_add": args.cap_add,
        "cap_drop": args.cap_drop,
        "platform": args.platform,
        "tty": args.tty,
        "open_stdin": args.interactive,
    }
    if args.command:
        params["cmd"] = list(args.command)
    if args.ip:
        params["ip"] = args.ip
    if args.mac_address:
        params["mac_address"] = args.mac_address
    if args.entrypoint is not None:
        params["entrypoint"] = [args.entrypoint] if args.entrypoint else []
    if args.memory:
        params["memory"] = parse_bytes(args.memory)
    if args.cpus is not None:
        params["cpus"] = args.cpus
    if args.cpu_shares is not None:
        params["cpu_shares"] = args.cpu_shares
    for key in ("cpuset_cpus", "cpuset_mems"):
        if getattr(args, key):
            params[key] = getattr(args, key)
    if args.pids_limit is not None:
        params["pids_limit"] = args.pids_limit
    if args.stop_timeout is not None:
        params["stop_timeout"] = args.stop_timeout
    if args.mount:
        params["mounts"] = list(args.mount)
    if args.volumes_from:
        params["volumes_from"] = list(args.volumes_from)
    if args.log_driver:
        params["log_driver"] = args.log_driver
    if args.log_opt:
        params["log_opts"] = parse_log_opts(args.log_opt)
    params.update(health_params(args))
    params.update(host_params(args))
    return params


def add_host_flags(p: Parser) -> None:
    """docker's host options (checked by the daemon: engine.supervisor.host_options)."""
    p.add_argument("--privileged", action="store_true")
    p.add_argument("--security-opt", action="append", default=[])
    p.add_argument("--sysctl", action="append", default=[])
    p.add_argument("--ulimit", action="append", default=[])
    p.add_argument("--shm-size", default=None)
    p.add_argument("--oom-score-adj", type=int, default=None)
    p.add_argument("--group-add", action="append", default=[])
    p.add_argument("--pid", default="")
    p.add_argument("--ipc", default="")
    p.add_argument("--uts", default="")
    p.add_argument("--memory-swap", default=None)
    p.add_argument("--cpu-quota", type=int, default=None)
    p.add_argument("--cpu-period", type=int, default=None)
    p.add_argument("--device", action="append", default=[])
    p.add_argument("--memory-reservation", default=None)
    p.add_argument("--oom-kill-disable", action="store_true")


def host_params(args: Namespace) -> dict[str, Any]:
    params: dict[str, Any] = {}
    if args.privileged:
        params["privileged"] = True
    if args.security_opt:
        params["security_opt"] = [security_opt(o) for o in args.security_opt]
    if args.sysctl:
        sysctls = {}
        for item in args.sysctl:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise InvalidArgument(f"invalid argument {item!r} for --sysctl: expected KEY=VALUE")
            sysctls[key] = value
        params["sysctls"] = sysctls
    for flag, key in (("ulimit", "ulimits"), ("group_add", "group_add"), ("device", "devices")):
        if getattr(args, flag):
            params[key] = list(getattr(args, flag))
    for key in ("pid", "ipc", "uts"):
        if getattr(args, key):
            params[key] = getattr(args, key)
    if args.shm_size is not None:
        params["shm_size"] = parse_bytes(args.shm_size)
    if args.memory_swap is not None:
        params["memory_swap"] = -1 if args.memory_swap.strip() == "-1" else parse_bytes(args.memory_swap)
    if args.memory_reservation is not None:
        params["memory_reservation"] = parse_bytes(args.memory_reservation)
    if args.oom_kill_disable:
        params["oom_kill_disable"] = True
    for key in ("oom_score_adj", "cpu_quota", "cpu_period"):
        if getattr(args, key) is not None:
            params[key] = getattr(args, key)
    return params


def security_opt(opt: str) -> str:
    """As docker's CLI: ``seccomp=PATH`` is sent as the file's content (the daemon may run
    elsewhere); ``unconfined`` and the other options as they are."""
    key, sep, value = opt.partition("=")
    if not sep:
        key, sep, value = opt.partition(":")
    if key != "seccomp" or not sep or value in ("unconfined", "builtin", "default") or value.lstrip().startswith("{"):
        return opt
    try:
        with open(value, "rb") as f:
            content = f.read()
    except OSError as e:
        raise InvalidArgument(f"opening seccomp profile ({value}) failed: {e.strerror or e}") from None
    import json

    try:
        profile = json.loads(content)
    except ValueError as e:
        raise InvalidArgument(f"compacting json for seccomp profile ({value}) failed: {e}") from None
    return "seccomp=" + json.dumps(profile, separators=(",", ":"))


def health_params(args: Namespace) -> dict[str, Any]:
    """--health-* (durations like docker's: 30s, 1m30s, 500ms; plain numbers are seconds)."""
    params: dict[str, Any] = {}
    if args.health_cmd:
        params["health_cmd"] = args.health_cmd
    for flag in ("interval", "timeout", "start_period"):
        value = getattr(args, f"health_{flag}")
        if value is not None:
            params[f"health_{flag}"] = parse_duration(value, f"--health-{flag.replace('_', '-')}")
    if args.health_retries is not None:
        params["health_retries"] = args.health_retries
    if args.no_healthcheck:
        params["no_healthcheck"] = True
    return params


def parse_duration(text: str, flag: str) -> float:
    """Go's durations (``1m30s``, ``500ms``, ``2h``) or plain seconds."""
    try:
        return float(text)
    except ValueError:
        pass
    units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "us": 1e-6, "ns": 1e-9}
    total, number, i = 0.0, "", 0
    while i < len(text):
        ch = text[i]
        if ch.isdigit() or ch == ".":
            number += ch
            i += 1
            continue
        unit = text[i:i + 2] if text[i:i + 2] in units else ch
        if unit not in units or not number:
            raise InvalidArgument(f"invalid {flag} {text!r}: use a duration like 30s, 1m30s or 500ms")
        total += float(number) * units[unit]
        number, i = "", i + len(unit)
    if number:
        raise InvalidArgument(f"invalid {flag} {text!r}: a unit is missing (30s, 1m, 500ms)")
    return total


def parse_log_opts(values: list[str]) -> dict[str, str]:
    """``--log-opt max-size=1m`` (repeatable; one may also hold several, comma separated)."""
    opts: dict[str, str] = {}
    for value in values:
        for item in value.split(","):
            key, sep, v = item.partition("=")
            if not sep or not key.strip():
                raise InvalidArgument(f"invalid --log-opt {item!r}: expected KEY=VALUE")
            opts[key.strip()] = v.strip()
    return opts


def setup(sub: Any) -> None:
    # docker's -h is --hostname, so these two keep only --help.
    p = sub.add_parser("run", help="create and start a container", add_help=False)
    p.add_argument("--help", action="help")
    add_create_flags(p)
    p.add_argument("-d", "--detach", action="store_true")
    p.add_argument("-i", "--interactive", action="store_true")
    p.add_argument("-t", "--tty", action="store_true")
    p.add_argument("--detach-keys", default="")
    add_sig_proxy_flag(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("create", help="create a container", add_help=False)
    p.add_argument("--help", action="help")
    add_create_flags(p)
    p.add_argument("-i", "--interactive", action="store_true")
    p.add_argument("-t", "--tty", action="store_true")
    p.set_defaults(func=cmd_create)

    p = sub.add_parser("start", help="start containers")
    p.add_argument("-a", "--attach", action="store_true")
    p.add_argument("-i", "--interactive", action="store_true")
    p.add_argument("--detach-keys", default="")
    p.add_argument("containers", nargs="+")
    p.set_defaults(func=cmd_start)

    p = sub.add_parser("attach", help="attach to a running container's input and output")
    p.add_argument("--detach-keys", default="")
    p.add_argument("--no-stdin", action="store_true")
    add_sig_proxy_flag(p)
    p.add_argument("container")
    p.set_defaults(func=cmd_attach)

    for verb, helptext in (("stop", "stop containers"), ("restart", "restart containers")):
        p = sub.add_parser(verb, help=helptext)
        p.add_argument("-t", "--time", "--timeout", type=stop_seconds, default=None, dest="time")
        p.add_argument("-s", "--signal", default="")
        p.add_argument("containers", nargs="+")
        p.set_defaults(func=cmd_stop if verb == "stop" else cmd_restart)

    p = sub.add_parser("kill", help="send a signal to containers")
    p.add_argument("-s", "--signal", default="SIGKILL")
    p.add_argument("containers", nargs="+")
    p.set_defaults(func=cmd_kill)

    for verb in ("pause", "unpause"):
        p = sub.add_parser(verb, help=f"{verb} containers")
        p.add_argument("containers", nargs="+")
        p.set_defaults(func=cmd_simple, method=f"container.{verb}")

    p = sub.add_parser("rm", help="remove containers")
    p.add_argument("-f", "--force", action="store_true")
    p.add_argument("-v", "--volumes", action="store_true")
    p.add_argument("containers", nargs="+")
    p.set_defaults(func=cmd_rm)

    add_ps_parser(sub, "ps")

    p = sub.add_parser("inspect", help="low-level information on containers or images")
    p.add_argument("-f", "--format", default="")
    p.add_argument("--type", default="")
    p.add_argument("objects", nargs="+")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("logs", help="fetch a container's output")
    p.add_argument("-f", "--follow", action="store_true")
    p.add_argument("-n", "--tail", default="all")
    p.add_argument("--since", default=None)
    p.add_argument("--until", default=None)
    p.add_argument("-t", "--timestamps", action="store_true")
    p.add_argument("container")
    p.set_defaults(func=cmd_logs)

    p = sub.add_parser("wait", help="wait for containers to stop; print their exit codes")
    p.add_argument("--condition", default="not-running", choices=("not-running", "next-exit", "removed"))
    p.add_argument("containers", nargs="+")
    p.set_defaults(func=cmd_wait)

    p = sub.add_parser("exec", help="run a command in a running container")
    p.add_argument("-e", "--env", action="append", default=[])
    p.add_argument("-w", "--workdir", default="")
    p.add_argument("-u", "--user", default="")
    p.add_argument("-i", "--interactive", action="store_true")
    p.add_argument("-t", "--tty", action="store_true")
    p.add_argument("-d", "--detach", action="store_true")
    p.add_argument("container")
    p.add_argument("command", nargs=REMAINDER)
    p.set_defaults(func=cmd_exec)

    p = sub.add_parser("rename", help="rename a container")
    p.add_argument("container")
    p.add_argument("new_name")
    p.set_defaults(func=cmd_rename)

    p = sub.add_parser("container", help="manage containers")
    csub = p.add_subparsers(dest="subcommand", metavar="SUBCOMMAND")
    pp = csub.add_parser("prune", help="remove all stopped containers")
    pp.add_argument("-f", "--force", action="store_true")
    pp.add_argument("--filter", action="append", default=[])
    pp.set_defaults(func=cmd_prune)
    for name in ("ls", "list"):
        add_ps_parser(csub, name)

    p = sub.add_parser("port", help="list a container's published ports")
    p.add_argument("container")
    p.add_argument("private_port", nargs="?")
    p.set_defaults(func=cmd_port)


def add_sig_proxy_flag(p: Parser) -> None:
    # docker's boolean, written --sig-proxy=false (a value is required here: an option with
    # an optional value would send every run through argparse, see engine.cli.argspec)
    p.add_argument("--sig-proxy", default="true", choices=("true", "false", "1", "0"))


def add_ps_parser(sub: Any, name: str) -> None:
    """``ps`` and its aliases ``container ls|list``."""
    p = sub.add_parser(name, help="list containers")
    p.add_argument("-a", "--all", action="store_true")
    p.add_argument("-q", "--quiet", action="store_true")
    p.add_argument("-f", "--filter", action="append", default=[])
    p.add_argument("-n", "--last", type=int, default=-1)
    p.add_argument("-l", "--latest", action="store_true")
    p.add_argument("--no-trunc", action="store_true")
    p.add_argument("--format", default="")
    p.set_defaults(func=cmd_ps)


def _forward_until_exit(stream: Any) -> int:
    """Copy an attached process's output to ours until it exits; its exit code (130 on
    Ctrl-C, after telling the daemon to stop streaming)."""
    try:
        for item in stream:
            _write_output(item)
    except KeyboardInterrupt:
        stream.cancel()
        return 130
    return int(stream.result.get("ExitCode", 0))


def _write_output(item: dict[str, Any]) -> None:
    out = sys.stdout.buffer if item.get("stream") != "stderr" else sys.stderr.buffer
    data = item.get("data", b"")
    out.write(data if isinstance(data, bytes) else str(data).encode())
    out.flush()


def _pull(ctx: Context, args: Namespace) -> None:
    from engine.cli.commands.images import pull_image

    pull_image(ctx, args.image, platform=args.platform, quiet=True, out=sys.stderr)


def _image_missing(error: NotFound) -> bool:
    """The daemon marks the NotFound of an image that is not there (pull it) apart from any
    other (a missing volume source, network...)."""
    return "missing_image" in error.details


def _pulling(ctx: Context, args: Namespace, attempt: Any) -> Any:
    """``attempt()`` with docker's pull policy (--pull missing|always|never): try first and
    pull only when the daemon says the image is missing, then try once more; the usual case
    costs one round trip."""
    if args.pull == "always":
        _pull(ctx, args)
    try:
        return attempt()
    except NotFound as e:
        if args.pull != "missing" or not _image_missing(e):
            raise
    _pull(ctx, args)
    return attempt()


def cmd_create(ctx: Context, args: Namespace) -> int:
    params = create_params(args)
    result = _pulling(ctx, args, lambda: ctx.client().call("container.create", params))
    print(result["Id"])
    return 0


def cmd_run(ctx: Context, args: Namespace) -> int:
    """One container.run round trip: the daemon creates, starts (and with --rm removes)."""
    params = create_params(args)
    if args.detach:
        params["detach"] = True
    elif args.interactive or args.tty:
        _require_terminal(args.interactive, args.tty)
        params["stdin_once"] = args.interactive
        params["detach_keys"] = args.detach_keys
        try:
            # the image first: a retry after a pull could not replay stdin already sent
            _ensure_image(ctx, args)
            return _interactive(lambda: ctx.client().duplex("container.run", params),
                                stdin=args.interactive, tty=args.tty, sig_proxy=_flag(args.sig_proxy))
        except EngineError as e:
            print(f"Error: {e}", file=sys.stderr)
            return int(e.details.get("exit_code") or 125)
    try:
        return _pulling(ctx, args, lambda: _run_once(ctx, args, params))  # type: ignore[no-any-return]
    except EngineError as e:
        print(f"Error: {e}", file=sys.stderr)
        # a failed start carries docker's 126/127 (or 125); any other error is the engine's 125
        return int(e.details.get("exit_code") or 125)


def _flag(value: str) -> bool:
    return value in ("true", "1")


def _require_terminal(interactive: bool, tty: bool) -> None:
    """docker refuses -it when its stdin is not a terminal."""
    import os

    if interactive and tty and not os.isatty(0):
        raise InvalidArgument("the input device is not a TTY; drop -t to pipe input in")


def _ensure_image(ctx: Context, args: Namespace) -> None:
    """The pull policy, applied before an interactive run (see _pulling)."""
    if args.pull == "always":
        _pull(ctx, args)
    elif args.pull == "missing":
        try:
            ctx.client().call("image.inspect", id=args.image)
        except NotFound:
            _pull(ctx, args)


def _interactive(open_session: Any, *, stdin: bool, tty: bool, sig_proxy: bool = True) -> int:
    from engine.cli.interactive import run_session, session_exit

    return session_exit(lambda: run_session(open_session(), stdin=stdin, tty=tty, sig_proxy=sig_proxy))


def _run_once(ctx: Context, args: Namespace, params: dict[str, Any]) -> int:
    client = ctx.client()
    if args.detach:
        print(client.call("container.run", params)["Id"])
        return 0
    # A missing image is reported before any output, so _pulling may retry this safely.
    return _forward_until_exit(client.stream("container.run", params))


def _each(ctx: Context, names: list[str], fn: Any) -> int:
    failed = 0
    for name in names:
        try:
            fn(name)
            print(name)
        except EngineError as e:
            print(f"Error response from daemon: {e}", file=sys.stderr)
            failed = 1
    return 1 if failed else 0


def cmd_start(ctx: Context, args: Namespace) -> int:
    client = ctx.client()
    if args.attach or args.interactive:
        if len(args.containers) != 1:
            raise InvalidArgument("you cannot start and attach multiple containers at once")
        config = client.call("container.inspect", id=args.containers[0])["Config"]
        if config.get("Tty") or config.get("OpenStdin"):
            stdin = bool(args.interactive and config.get("OpenStdin"))
            _require_terminal(stdin, bool(config.get("Tty")))
            return _interactive(lambda: client.duplex("container.start", id=args.containers[0], attach=True,
                                                      detach_keys=args.detach_keys),
                                stdin=stdin, tty=bool(config.get("Tty")))
        return _forward_until_exit(client.stream("container.start", id=args.containers[0], attach=True))
    return _each(ctx, args.containers, lambda n: client.call("container.start", id=n))


def cmd_stop(ctx: Context, args: Namespace) -> int:
    client = ctx.client()
    params: dict[str, Any] = {"signal": args.signal}
    if args.time is not None:
        params["timeout"] = args.time
    return _each(ctx, args.containers, lambda n: client.call("container.stop", id=n, **params))


def cmd_restart(ctx: Context, args: Namespace) -> int:
    client = ctx.client()
    params: dict[str, Any] = {}
    if args.time is not None:
        params["timeout"] = args.time
    return _each(ctx, args.containers, lambda n: client.call("container.restart", id=n, **params))


def cmd_kill(ctx: Context, args: Namespace) -> int:
    client = ctx.client()
    return _each(ctx, args.containers, lambda n: client.call("container.kill", id=n, signal=args.signal))


def cmd_simple(ctx: Context, args: Namespace) -> int:
    client = ctx.client()
    return _each(ctx, args.containers, lambda n: client.call(args.method, id=n))


def cmd_rm(ctx: Context, args: Namespace) -> int:
    client = ctx.client()
    return _each(ctx, args.containers, lambda n: client.call("container.remove", id=n, force=args.force,
                                                                    volumes=args.volumes))


def cmd_ps(ctx: Context, args: Namespace) -> int:
    params: dict[str, Any] = {"all": args.all or args.latest or args.last >= 0,
                              "filters": parse_filters(args.filter)}
    if args.latest:
        params["limit"] = 1
    elif args.last >= 0:
        params["limit"] = args.last
    rows = ctx.client().call("container.list", params)
    if args.quiet:
        for r in rows:
            print(r["Id"] if args.no_trunc else r["Id"][:12])
        return 0
    if args.format == "json":
        print_json(rows)
        return 0
    if args.format:
        from engine.cli.views import PS_HEADERS, ps_row

        print_formatted(args.format, [ps_row(r, args.no_trunc) for r in rows], PS_HEADERS)
        return 0
    print_table(
        ["CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "PORTS", "NAMES"],
        [
            [
                r["Id"] if args.no_trunc else r["Id"][:12],
                r["Image"],
                json_string(r["Command"] if args.no_trunc else _trunc(r["Command"], 20)),
                _ago(r["Created"]),
                r["Status"],
                ", ".join(_port_text(p) for p in r["Ports"]),
                ",".join(r["Names"]),
            ]
            for r in rows
        ],
    )
    return 0


# json.dumps(text, ensure_ascii=False) for a str, without importing json (with re, ~5 ms of
# `engctl ps`, which is benchmarked): the same escapes.
_JSON_ESCAPES = {
    **{c: f"\\u{c:04x}" for c in range(0x20)},
    **{ord(c): e for c, e in (('"', '\\"'), ("\\", "\\\\"), ("\n", "\\n"), ("\r", "\\r"),
                              ("\t", "\\t"), ("\b", "\\b"), ("\f", "\\f"))},
}


def json_string(text: str) -> str:
    return '"' + text.translate(_JSON_ESCAPES) + '"'


def _port_text(p: dict[str, Any]) -> str:
    return f"{p.get('IP') or '0.0.0.0'}:{p['PublicPort']}->{p['PrivatePort']}/{p['Type']}"


def _trunc(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def _ago(ts: float) -> str:
    from engine.humanize import human_duration

    return f"{human_duration(time.time() - ts)} ago"


def cmd_inspect(ctx: Context, args: Namespace) -> int:
    client = ctx.client()
    results = []
    failed = False
    for obj in args.objects:
        try:
            if args.type in ("", "container"):
                try:
                    results.append(client.call("container.inspect", id=obj))
                    continue
                except NotFound:
                    if args.type == "container":
                        raise
            results.append(client.call("image.inspect", id=obj))
        except EngineError as e:
            print(f"Error: {e}", file=sys.stderr)
            failed = True
    if args.format and args.format != "json":
        for r in results:
            print(format_path(r, args.format))
    else:
        print_json(results)
    return 1 if failed else 0




def cmd_logs(ctx: Context, args: Namespace) -> int:
    params: dict[str, Any] = {"id": args.container, "follow": args.follow, "timestamps": args.timestamps}
    if args.tail != "all":
        try:
            params["tail"] = int(args.tail)
        except ValueError:
            raise InvalidArgument(f"invalid --tail {args.tail!r}: a number or 'all'") from None
    if args.since:
        params["since"] = parse_time(args.since)
    if args.until:
        params["until"] = parse_time(args.until)
    stream = ctx.client().stream("container.logs", params)
    try:
        for item in stream:
            if args.timestamps:
                stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(item["time"]))
                frac = f"{item['time'] % 1:.9f}"[1:]
                item = {**item, "data": f"{stamp}{frac}Z ".encode() + item["data"]}
            _write_output(item)
    except KeyboardInterrupt:
        stream.cancel()
    return 0


def cmd_wait(ctx: Context, args: Namespace) -> int:
    client = ctx.client()
    failed = False
    for name in args.containers:
        try:
            print(client.call("container.wait", id=name, condition=args.condition)["StatusCode"])
        except EngineError as e:
            print(f"Error: {e}", file=sys.stderr)
            failed = True
    return 1 if failed else 0


def cmd_attach(ctx: Context, args: Namespace) -> int:
    client = ctx.client()
    info = client.call("container.inspect", id=args.container)
    if not info["State"]["Running"]:
        raise InvalidArgument(f"you cannot attach to a stopped container {args.container}, start it first")
    config = info["Config"]
    tty = bool(config.get("Tty"))
    stdin = bool(config.get("OpenStdin")) and not args.no_stdin
    _require_terminal(stdin, tty)
    return _interactive(lambda: client.attach(args.container, stdin=stdin, detach_keys=args.detach_keys),
                        stdin=stdin, tty=tty, sig_proxy=_flag(args.sig_proxy))


def cmd_exec(ctx: Context, args: Namespace) -> int:
    if not args.command:
        raise InvalidArgument("exec needs a command: engctl exec CONTAINER COMMAND [ARG...]")
    if args.interactive or args.tty:
        _require_terminal(args.interactive, args.tty)
        return _interactive(lambda: ctx.client().duplex(
            "container.exec", id=args.container, cmd=args.command, env=args.env, workdir=args.workdir,
            user=args.user, stdin=args.interactive, tty=args.tty), stdin=args.interactive, tty=args.tty)
    return _forward_until_exit(ctx.client().stream(
        "container.exec", id=args.container, cmd=args.command, env=args.env,
        workdir=args.workdir, user=args.user))


def cmd_rename(ctx: Context, args: Namespace) -> int:
    ctx.client().call("container.rename", id=args.container, name=args.new_name)
    return 0


def cmd_prune(ctx: Context, args: Namespace) -> int:
    result = ctx.client().call("container.prune", filters=parse_filters(args.filter))
    deleted = result.get("ContainersDeleted") or []
    if deleted:
        print("Deleted Containers:")
        for cid in deleted:
            print(cid)
    print(f"Total reclaimed: {len(deleted)} containers")
    return 0


def cmd_port(ctx: Context, args: Namespace) -> int:
    info = ctx.client().call("container.inspect", id=args.container)
    for key, bindings in (info["NetworkSettings"]["Ports"] or {}).items():
        if args.private_port and args.private_port not in (key, key.partition("/")[0]):
            continue
        for b in bindings or []:
            print(f"{key} -> {b.get('HostIp') or '0.0.0.0'}:{b['HostPort']}")
    return 0
