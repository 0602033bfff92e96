"""container.* methods: create, start (optionally attached), run (create + start in one
call), stop, restart, kill, pause, unpause, remove, list, inspect, logs, wait, exec, rename,
prune."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import trio

from engine.actors.container import ContainerActor, parse_signal
from engine.actors.logs import follow, read_records
from engine.actors.model import BindMount, ContainerConfig, TmpfsMount, iso_time
from engine.actors.state import ACTIVE, ContainerState, docker_status
from engine.errors import Conflict, EngineError, InvalidArgument, NotFound
from engine.rpc.methods import MethodTable
from engine.rpc.server import CallContext, StreamSender
from engine.supervisor.containers import ContainerSupervisor
from engine.supervisor.restart import RestartPolicy

log = logging.getLogger("engine.api.containers")


@attrs.frozen
class CreateParams:
    image: str
    name: str = ""
    cmd: list[str] | None = None
    entrypoint: list[str] | None = None
    env: list[str] = attrs.field(factory=list)
    workdir: str = ""
    user: str = ""
    hostname: str = ""
    volumes: list[str] = attrs.field(factory=list)  # -v SRC:DST[:ro]
    tmpfs: list[str] = attrs.field(factory=list)  # --tmpfs DST[:opts]
    read_only: bool = False
    init: bool = False
    memory: int | None = None
    cpus: float | None = None
    pids_limit: int | None = None
    restart: str = "no"
    auto_remove: bool = False
    labels: dict[str, str] = attrs.field(factory=dict)
    runtime: str = ""
    stop_signal: str = ""
    stop_timeout: float | None = None
    network: str = ""
    network_aliases: list[str] = attrs.field(factory=list)
    publish: list[str] = attrs.field(factory=list)
    publish_all: bool = False
    dns: list[str] = attrs.field(factory=list)
    dns_search: list[str] = attrs.field(factory=list)
    add_hosts: list[str] = attrs.field(factory=list)
    cap_add: list[str] = attrs.field(factory=list)
    cap_drop: list[str] = attrs.field(factory=list)
    platform: str = ""


@attrs.frozen
class RunParams(CreateParams):
    """container.run: everything container.create takes, and whether to stay attached."""

    detach: bool = False


@attrs.frozen
class RefParams:
    id: str


@attrs.frozen
class StartParams:
    id: str
    attach: bool = False


@attrs.frozen
class StopParams:
    id: str
    timeout: float | None = None
    signal: str = ""


@attrs.frozen
class KillParams:
    id: str
    signal: str = "SIGKILL"


@attrs.frozen
class RemoveParams:
    id: str
    force: bool = False


@attrs.frozen
class ListParams:
    all: bool = False
    filters: dict[str, list[str]] = attrs.field(factory=dict)
    limit: int = -1


@attrs.frozen
class LogsParams:
    id: str
    follow: bool = False
    tail: int | None = None
    since: float | None = None
    until: float | None = None
    timestamps: bool = False


@attrs.frozen
class ExecParams:
    id: str
    cmd: list[str]
    env: list[str] = attrs.field(factory=list)
    workdir: str = ""
    user: str = ""


@attrs.frozen
class RenameParams:
    id: str
    name: str


@attrs.frozen
class PruneParams:
    filters: dict[str, list[str]] = attrs.field(factory=dict)


AUTO_REMOVE_WAIT = 30.0  # seconds an attached `run --rm` waits for the removal
FAILED_RUN_REMOVE_WAIT = 30.0  # seconds a `run --rm` whose start failed waits for the removal


def sup(ctx: CallContext) -> ContainerSupervisor:
    return ctx.app.services["containers"]  # type: ignore[no-any-return]


def parse_volume(spec: str) -> BindMount:
    parts = spec.split(":")
    if len(parts) == 1:
        raise InvalidArgument(
            f"invalid volume {spec!r}: anonymous volumes are not supported yet; use HOST_PATH:CONTAINER_PATH[:ro]"
        )
    if len(parts) > 3:
        raise InvalidArgument(f"invalid volume {spec!r}: expected SRC:DST[:ro|rw]")
    source, destination = parts[0], parts[1]
    mode = parts[2] if len(parts) == 3 else "rw"
    if mode not in ("ro", "rw"):
        raise InvalidArgument(f"invalid volume mode {mode!r} in {spec!r}: use ro or rw")
    if not source.startswith("/"):
        raise InvalidArgument(
            f"invalid volume {spec!r}: the source must be an absolute host path (named volumes are not supported yet)"
        )
    if not destination.startswith("/"):
        raise InvalidArgument(f"invalid volume {spec!r}: the destination must be an absolute path")
    return BindMount(source, destination, mode == "ro")


def parse_tmpfs(spec: str) -> TmpfsMount:
    destination, _, options = spec.partition(":")
    if not destination.startswith("/"):
        raise InvalidArgument(f"invalid --tmpfs {spec!r}: the path must be absolute")
    return TmpfsMount(destination, options)


async def build_config(ctx: CallContext, p: CreateParams) -> tuple[ContainerConfig, list[str]]:
    app = ctx.app
    from engine.api.images import images as image_store

    try:
        image = image_store(ctx).get(p.image)
    except NotFound as e:
        # Tells a client "pull first" apart from any other NotFound, without a second call.
        e.details["missing_image"] = p.image
        raise
    policy = RestartPolicy.parse(p.restart)  # a bad policy is refused now, not at exit
    if p.auto_remove and policy.name != "no":
        raise InvalidArgument("--rm and a restart policy cannot be combined (docker refuses it too)")
    for value in (p.memory, p.pids_limit):
        if value is not None and value <= 0:
            raise InvalidArgument("--memory and --pids-limit must be positive")
    if p.cpus is not None and p.cpus <= 0:
        raise InvalidArgument("--cpus must be positive")
    for item in p.env:
        if "=" not in item:
            raise InvalidArgument(f"invalid environment entry {item!r}: expected KEY=VALUE")
    runtime_name = p.runtime or app.config.default_runtime
    app.runtime(runtime_name)  # a clear error now rather than at start
    img = image.config.config
    from engine.supervisor.bundle import resolve

    args, env, workdir, user = resolve(image.config, entrypoint=p.entrypoint, cmd=p.cmd,
                                       env=list(p.env), workdir=p.workdir, user=p.user)
    # Without networking, a container gets an empty network namespace.
    network_mode = p.network or app.config.default_network
    if not ctx.app.services.get("network"):
        network_mode = "none"
    return ContainerConfig(
        id="",
        name=p.name.lstrip("/"),
        image=p.image,
        image_id=image.id,
        created=time.time(),
        runtime=runtime_name,
        entrypoint=p.entrypoint,
        cmd=p.cmd,
        args=args,
        env=env,
        workdir=workdir,
        user=user,
        hostname=p.hostname,
        binds=[parse_volume(v) for v in p.volumes],
        tmpfs=[parse_tmpfs(t) for t in p.tmpfs],
        read_only=p.read_only,
        init=p.init,
        memory=p.memory,
        cpus=p.cpus,
        pids_limit=p.pids_limit,
        restart_policy=str(RestartPolicy.parse(p.restart)),
        auto_remove=p.auto_remove,
        labels={**(img.labels or {}), **p.labels},
        stop_signal=p.stop_signal or img.stop_signal or "SIGTERM",
        stop_timeout=10.0 if p.stop_timeout is None else p.stop_timeout,
        network_mode=network_mode,
        aliases=list(p.network_aliases),
        publish_all=p.publish_all,
        dns=list(p.dns),
        dns_search=list(p.dns_search),
        add_hosts=list(p.add_hosts),
        cap_add=list(p.cap_add),
        cap_drop=list(p.cap_drop),
        layers=list(image.diff_ids),
        image_config={"ExposedPorts": img.exposed_ports or {}},
    ), p.publish


def summary(actor: ContainerActor) -> dict[str, Any]:
    c, s = actor.config, actor.status
    return {
        "Id": c.id,
        "Names": [c.name],
        "Image": c.image,
        "ImageID": c.image_id,
        "Command": " ".join(c.args),
        "Created": int(c.created),
        "State": docker_status(s.state),
        "Status": status_text(actor),
        "ExitCode": s.exit_code,
        "Labels": c.labels,
        "Ports": [attrs.asdict(p) for p in c.ports],
        "Runtime": c.runtime,
        "RestartCount": s.restart_count,
    }


def status_text(actor: ContainerActor) -> str:
    s = actor.status
    now = time.time()
    from engine.humanize import human_duration

    if s.state == ContainerState.RUNNING:
        return f"Up {human_duration(now - s.started_at)}"
    if s.state == ContainerState.PAUSED:
        return f"Up {human_duration(now - s.started_at)} (Paused)"
    if s.state == ContainerState.RESTARTING:
        return f"Restarting ({s.exit_code}) {human_duration(now - s.finished_at)} ago"
    if s.state == ContainerState.EXITED:
        return f"Exited ({s.exit_code}) {human_duration(now - s.finished_at)} ago"
    if s.state == ContainerState.CREATED or s.state == ContainerState.CREATING:
        return "Created"
    return s.state.value.capitalize()


def inspect(actor: ContainerActor) -> dict[str, Any]:
    c, s = actor.config, actor.status
    return {
        "Id": c.id,
        "Name": "/" + c.name,
        "Created": iso_time(c.created),
        "Path": c.args[0] if c.args else "",
        "Args": c.args[1:],
        "Image": c.image_id,
        "ImageName": c.image,
        "State": {
            "Status": docker_status(s.state),
            "Running": s.state in (ContainerState.RUNNING, ContainerState.PAUSED),
            "Paused": s.state == ContainerState.PAUSED,
            "Restarting": s.state == ContainerState.RESTARTING,
            "OOMKilled": s.oom_killed,
            "Dead": s.state == ContainerState.DEAD,
            "Pid": s.pid,
            "MonitorPid": s.monitor_pid,
            "ExitCode": s.exit_code,
            "Error": s.error,
            "StartedAt": iso_time(s.started_at),
            "FinishedAt": iso_time(s.finished_at),
        },
        "RestartCount": s.restart_count,
        "RestartReason": s.last_restart_reason,
        "LogPath": str(actor.files.log_path),
        "Driver": actor.app.config.storage_driver,
        "HostConfig": {
            "Runtime": c.runtime,
            "RestartPolicy": {"Name": RestartPolicy.parse(c.restart_policy).name,
                              "MaximumRetryCount": RestartPolicy.parse(c.restart_policy).max_retries},
            "AutoRemove": c.auto_remove,
            "Binds": [f"{b.source}:{b.destination}{':ro' if b.read_only else ''}" for b in c.binds],
            "Tmpfs": {t.destination: t.options for t in c.tmpfs},
            "ReadonlyRootfs": c.read_only,
            "Init": c.init,
            "Memory": c.memory or 0,
            "NanoCpus": int((c.cpus or 0) * 1e9),
            "PidsLimit": c.pids_limit,
            "NetworkMode": c.network_mode,
            "CapAdd": c.cap_add,
            "CapDrop": c.cap_drop,
            "PortBindings": [attrs.asdict(p) for p in c.ports],
        },
        "Config": {
            "Hostname": c.hostname or c.id[:12],
            "User": c.user,
            "Env": c.env,
            "Cmd": c.cmd,
            "Entrypoint": c.entrypoint,
            "WorkingDir": c.workdir,
            "Image": c.image,
            "Labels": c.labels,
            "StopSignal": c.stop_signal,
            "StopTimeout": c.stop_timeout,
        },
        "NetworkSettings": {
            "IPAddress": s.ip_address,
            "Networks": {k: v for k, v in s.network_details.items() if not k.startswith("_")},
            "Ports": [attrs.asdict(p) for p in c.ports],
        },
    }


def list_filter(filters: dict[str, list[str]]) -> Any:
    allowed = {"id", "name", "status", "label", "ancestor", "exited"}
    unknown = set(filters) - allowed
    if unknown:
        raise InvalidArgument(f"unknown filter {', '.join(sorted(unknown))}; use {', '.join(sorted(allowed))}")

    def match(actor: ContainerActor) -> bool:
        c, s = actor.config, actor.status
        for key, values in filters.items():
            if key == "id" and not any(c.id.startswith(v) for v in values):
                return False
            if key == "name" and not any(v.lstrip("/") in c.name for v in values):
                return False
            if key == "status" and docker_status(s.state) not in values:
                return False
            if key == "exited" and not (s.state == ContainerState.EXITED and str(s.exit_code) in values):
                return False
            if key == "ancestor" and not any(v in (c.image, c.image_id) or c.image_id.removeprefix("sha256:").startswith(v) for v in values):
                return False
            if key == "label":
                for v in values:
                    k, sep, want = v.partition("=")
                    if k not in c.labels or (sep and c.labels[k] != want):
                        return False
        return True

    return match


def register(table: MethodTable) -> None:
    @table.method("container.create", params=CreateParams)
    async def create(ctx: CallContext, p: CreateParams) -> dict[str, Any]:
        """Create a container from a local image (docker create)."""
        actor = await create_container(ctx, p)
        return {"Id": actor.id, "Name": actor.name, "Warnings": []}

    @table.method("container.start", params=StartParams, stream=True)
    async def start(ctx: CallContext, p: StartParams, stream: StreamSender) -> dict[str, Any]:
        """Start a container. With attach, stream its output until it exits and return
        its exit code (docker run without -d)."""
        actor = sup(ctx).get(p.id)
        if not p.attach:
            await start_plain(actor)
            return {"Id": actor.id}
        return await start_attached(actor, stream, start_plain)

    @table.method("container.run", params=RunParams, stream=True)
    async def run(ctx: CallContext, p: RunParams, stream: StreamSender) -> dict[str, Any]:
        """Create and start a container in one call (docker run). Attached (the default):
        stream its output and return its exit code, after its removal with auto_remove.
        Detached: return once it runs. A failed start keeps its error and adds details
        container_id and exit_code (126/127: the command could not be run / was not
        found); with auto_remove the container is removed before the reply."""
        actor = await create_container(ctx, p)
        if p.detach:
            await start_for_run(actor)
            return {"Id": actor.id, "Warnings": []}
        return await start_attached(actor, stream, start_for_run)

    @table.method("container.stop", params=StopParams)
    async def stop(ctx: CallContext, p: StopParams) -> dict[str, Any]:
        """Stop a container: its stop signal, then SIGKILL after the timeout."""
        return await sup(ctx).get(p.id).call("stop", grace=p.timeout, signal=p.signal or None)  # type: ignore[no-any-return]

    @table.method("container.restart", params=StopParams)
    async def restart(ctx: CallContext, p: StopParams) -> dict[str, Any]:
        """Stop (if running) and start again."""
        return await sup(ctx).get(p.id).call("restart", grace=p.timeout)  # type: ignore[no-any-return]

    @table.method("container.kill", params=KillParams)
    async def kill(ctx: CallContext, p: KillParams) -> dict[str, Any]:
        """Send a signal to the container's main process."""
        parse_signal(p.signal)
        return await sup(ctx).get(p.id).call("kill", signal=p.signal)  # type: ignore[no-any-return]

    @table.method("container.pause", params=RefParams)
    async def pause(ctx: CallContext, p: RefParams) -> dict[str, Any]:
        """Freeze every process of the container."""
        return await sup(ctx).get(p.id).call("pause")  # type: ignore[no-any-return]

    @table.method("container.unpause", params=RefParams)
    async def unpause(ctx: CallContext, p: RefParams) -> dict[str, Any]:
        """Thaw a paused container."""
        return await sup(ctx).get(p.id).call("unpause")  # type: ignore[no-any-return]

    @table.method("container.remove", params=RemoveParams)
    async def remove(ctx: CallContext, p: RemoveParams) -> dict[str, Any]:
        """Remove a container (force: kill it first)."""
        return await sup(ctx).get(p.id).call("remove", force=p.force)  # type: ignore[no-any-return]

    @table.method("container.rename", params=RenameParams)
    async def rename(ctx: CallContext, p: RenameParams) -> dict[str, Any]:
        """Give a container a new name."""
        await sup(ctx).rename(p.id, p.name)
        return {"name": p.name}

    @table.method("container.list", params=ListParams)
    async def list_(ctx: CallContext, p: ListParams) -> list[dict[str, Any]]:
        """List containers (running only unless all)."""
        match = list_filter(p.filters)
        found = []
        for actor in sup(ctx).all():
            if not p.all and actor.status.state not in ACTIVE and "status" not in p.filters:
                continue
            if match(actor):
                found.append(summary(actor))
        return found[: p.limit] if p.limit >= 0 else found

    @table.method("container.inspect", params=RefParams)
    async def inspect_(ctx: CallContext, p: RefParams) -> dict[str, Any]:
        """Low-level information on a container (docker inspect's shape)."""
        return inspect(sup(ctx).get(p.id))

    @table.method("container.wait", params=RefParams)
    async def wait(ctx: CallContext, p: RefParams) -> dict[str, Any]:
        """Wait until the container is not running; returns its exit code."""
        actor = sup(ctx).get(p.id)
        status = await actor.wait_for(
            lambda s: s.state in (ContainerState.EXITED, ContainerState.CREATED, ContainerState.DEAD))
        return {"StatusCode": status.exit_code, "OOMKilled": status.oom_killed}

    @table.method("container.logs", params=LogsParams, stream=True)
    async def logs(ctx: CallContext, p: LogsParams, stream: StreamSender) -> dict[str, Any]:
        """The container's output: tail, since/until, follow."""
        actor = sup(ctx).get(p.id)
        if p.tail is not None and p.tail < 0:
            raise InvalidArgument("--tail must be 0 or more")
        records, offset = await trio.to_thread.run_sync(
            lambda: read_records(actor.files.log_path, since=p.since, until=p.until, tail=p.tail))
        for record in records:
            await stream.send(record.to_wire(p.timestamps))
        if p.follow and actor.status.state in ACTIVE:
            started_at = actor.status.started_at

            def finished() -> bool:
                return actor.removed or actor.status.started_at != started_at or actor.status.state not in ACTIVE

            async for record in follow(actor.files.log_path, offset, finished=finished, changes=actor.changes):
                if p.until is not None and record.time > p.until:
                    break
                await stream.send(record.to_wire(p.timestamps))
        return {}

    @table.method("container.exec", params=ExecParams, stream=True)
    async def exec_(ctx: CallContext, p: ExecParams, stream: StreamSender) -> dict[str, Any]:
        """Run a command in a running container; stream its output, return its exit code."""
        actor = sup(ctx).get(p.id)
        if actor.status.state != ContainerState.RUNNING:
            raise Conflict(f"container {actor.name} is not running ({actor.status.state.value})")
        if not p.cmd:
            raise InvalidArgument("exec needs a command")
        from engine.supervisor.bundle import exec_process

        rootfs = await ctx.app.storage().mount(actor.id, list(actor.config.layers))
        process = await exec_process(actor.config, actor.status, rootfs, p.cmd,
                                     env=p.env, workdir=p.workdir, user=p.user)
        runtime = ctx.app.runtime(actor.config.runtime)
        handle = await runtime.exec(actor.id, process, work_dir=actor.run_dir)
        code = await pump_exec(handle, stream)
        ctx.app.events.emit("container", "exec_die", actor.id, name=actor.name, exitCode=code)
        return {"ExitCode": code}

    @table.method("container.prune", params=PruneParams)
    async def prune(ctx: CallContext, p: PruneParams) -> dict[str, Any]:
        """Remove every stopped container."""
        match = list_filter(p.filters)
        removed = []
        for actor in sup(ctx).all():
            if actor.status.state in (ContainerState.EXITED, ContainerState.CREATED, ContainerState.DEAD) and match(actor):
                try:
                    await actor.call("remove", force=False)
                    removed.append(actor.id)
                except (Conflict, NotFound):
                    pass
        return {"ContainersDeleted": removed}


async def create_container(ctx: CallContext, p: CreateParams) -> ContainerActor:
    """What container.create and container.run share: validate, build the config, let the
    network fill its part in, and register the container with the supervisor."""
    config, publish = await build_config(ctx, p)
    network = ctx.app.services.get("network")
    if network is not None:
        await network.prepare_config(config, publish)
    elif publish:
        raise InvalidArgument("publishing ports needs networking, which is unavailable")
    return await sup(ctx).create(config)


async def start_plain(actor: ContainerActor) -> None:
    await actor.call("start")


async def start_for_run(actor: ContainerActor) -> None:
    """Start a container that container.run has just created. A failure keeps its class and
    message and gains the details a client needs without another round trip (the exit code
    docker's `run` exits with); a `--rm` container is removed first, so nothing is left."""
    try:
        await actor.call("start")
    except EngineError as e:
        # The actor records 126/127/125 for a start error; 0 means it never got that far.
        e.details["container_id"] = actor.id
        e.details["exit_code"] = actor.status.exit_code or 125
        if actor.config.auto_remove:
            await remove_after_failed_start(actor)
        raise


async def remove_after_failed_start(actor: ContainerActor) -> None:
    # Shielded: a client that gave up must not leave a `--rm` container behind.
    with trio.CancelScope(shield=True), trio.move_on_after(FAILED_RUN_REMOVE_WAIT):
        try:
            await actor.call("remove", force=True)
        except NotFound:
            pass  # removed meanwhile by someone else
        except EngineError as e:
            log.warning("container %s: removal after its failed start: %s", actor.name, e)


async def start_attached(actor: ContainerActor, stream: StreamSender,
                         start: Callable[[ContainerActor], Awaitable[None]]) -> dict[str, Any]:
    """Start a container and stream its output until it exits; its exit code. With
    auto_remove, return only once it is removed (docker's `run --rm`: the name is free)."""
    actor.attach()
    try:
        await start(actor)
        offset = actor.status.log_offset_at_start
        started_at = actor.status.started_at

        def finished() -> bool:
            s = actor.status
            return actor.removed or s.started_at != started_at or s.state not in (
                ContainerState.RUNNING, ContainerState.PAUSED)

        async for record in follow(actor.files.log_path, offset, finished=finished, changes=actor.changes):
            await stream.send(record.to_wire(False))
        status = actor.status
        result = {"Id": actor.id, "ExitCode": status.exit_code, "OOMKilled": status.oom_killed}
    finally:
        actor.detach()
    if actor.config.auto_remove:
        with trio.move_on_after(AUTO_REMOVE_WAIT):
            await actor.wait_for(lambda _status: False)
    return result


async def pump_exec(handle: Any, stream: StreamSender) -> int:
    """Forward an exec's stdout/stderr as stream items; return its exit code."""
    async def forward(name: str, source: Any) -> None:
        if source is None:
            return
        async for chunk in source:
            await stream.send({"stream": name, "data": chunk})

    async with handle:  # leaving early (client gone) kills the exec'd process
        async with trio.open_nursery() as nursery:
            nursery.start_soon(forward, "stdout", handle.stdout)
            nursery.start_soon(forward, "stderr", handle.stderr)
        return int(await handle.wait())
