"""container.* methods: create, start (optionally attached), run (create + start in one
call), stop, restart, kill, pause, unpause, remove, list, inspect, logs, wait, exec, rename,
prune."""

from __future__ import annotations

import time
from typing import Any

import attrs

from engine.actors.container import ContainerActor
from engine.actors.model import iso_time
from engine.actors.state import ACTIVE, ContainerState, docker_status
from engine.api.container_views import (
    WaitParams,
    health_suffix,
    health_view,
    health_word,
    wait_condition,
)
from engine.errors import InvalidArgument
from engine.rpc.methods import MethodTable
from engine.rpc.server import CallContext, StreamInput, StreamSender
from engine.supervisor.container_service import (
    AttachSpec,
    ContainerService,
    CreateSpec,
    ExecSpec,
    LogsSpec,
    RunSpec,
)
from engine.supervisor.volume_views import mounts_view
from engine.volumes.specs import format_bind

# The params of container.create / run / exec / logs are the service's own types.
CreateParams = CreateSpec
RunParams = RunSpec
ExecParams = ExecSpec
LogsParams = LogsSpec
AttachParams = AttachSpec


@attrs.frozen
class RefParams:
    id: str


@attrs.frozen
class StartParams:
    id: str
    attach: bool = False
    detach_keys: str = ""  # start -ai of a container with a terminal


@attrs.frozen
class ResizeParams:
    id: str
    rows: int
    cols: int


@attrs.frozen
class StopParams:
    id: str
    timeout: int | None = None  # whole seconds; -1 waits for ever
    signal: str = ""


@attrs.frozen
class KillParams:
    id: str
    signal: str = "SIGKILL"


@attrs.frozen
class RemoveParams:
    id: str
    force: bool = False
    volumes: bool = False  # rm -v: the anonymous volumes too


@attrs.frozen
class ListParams:
    all: bool = False
    filters: dict[str, list[str]] = attrs.field(factory=dict)
    limit: int = -1


@attrs.frozen
class RenameParams:
    id: str
    name: str


@attrs.frozen
class PruneParams:
    filters: dict[str, list[str]] = attrs.field(factory=dict)


def containers(ctx: CallContext) -> ContainerService:
    return ContainerService(ctx.app)


def summary_command(args: list[str]) -> str:
    """dockerd's list's Command: the arguments with a space in single quotes (moby's
    daemon/list.go), so `docker ps` shows `sh -c 'echo a; …'` as it does."""
    return " ".join(args[:1] + [f"'{a}'" if " " in a else a for a in args[1:]])


def summary(actor: ContainerActor) -> dict[str, Any]:
    c, s = actor.config, actor.status
    return {
        "Id": c.id,
        "Names": [c.name],
        "Image": c.image,
        "ImageID": c.image_id,
        "Command": summary_command(c.args),
        "Created": int(c.created),
        "State": docker_status(s.state),
        "Status": status_text(actor),
        "ExitCode": s.exit_code,
        "Labels": c.labels,
        "Ports": [
            {"IP": p.host_ip or "0.0.0.0", "PrivatePort": p.container_port, "PublicPort": p.host_port,
             "Type": p.protocol}
            for p in c.ports
        ],
        "Runtime": c.runtime,
        "RestartCount": s.restart_count,
    }


def status_text(actor: ContainerActor) -> str:
    s = actor.status
    now = time.time()
    from engine.humanize import human_duration

    if s.state == ContainerState.RUNNING:
        return f"Up {human_duration(now - s.started_at)}{health_suffix(actor)}"
    if s.state == ContainerState.PAUSED:
        return f"Up {human_duration(now - s.started_at)} (Paused)"
    if s.state == ContainerState.RESTARTING:
        return f"Restarting ({s.exit_code}) {human_duration(now - s.finished_at)} ago"
    if s.state == ContainerState.EXITED:
        return f"Exited ({s.exit_code}) {human_duration(now - s.finished_at)} ago"
    if s.state == ContainerState.CREATED or s.state == ContainerState.CREATING:
        return "Created"
    return s.state.value.capitalize()


def port_bindings(actor: ContainerActor) -> dict[str, list[dict[str, str]]]:
    """docker's HostConfig.PortBindings: ``{"80/tcp": [{"HostIp": "", "HostPort": "8080"}]}``."""
    bindings: dict[str, list[dict[str, str]]] = {}
    for p in actor.config.ports:
        bindings.setdefault(f"{p.container_port}/{p.protocol}", []).append(
            {"HostIp": p.host_ip, "HostPort": str(p.host_port)})
    return bindings


def published_ports(actor: ContainerActor) -> dict[str, list[dict[str, str]] | None]:
    """docker's NetworkSettings.Ports: what is published now (``{}`` when not running);
    an exposed port that is not published maps to None."""
    if actor.status.state not in (ContainerState.RUNNING, ContainerState.PAUSED):
        return {}
    ports: dict[str, list[dict[str, str]] | None] = {
        key: None for key in (actor.config.image_config or {}).get("ExposedPorts") or {}}
    for p in actor.config.ports:
        entry = ports.get(f"{p.container_port}/{p.protocol}") or []
        entry.append({"HostIp": p.host_ip or "0.0.0.0", "HostPort": str(p.host_port)})
        ports[f"{p.container_port}/{p.protocol}"] = entry
    return ports


def inspect(actor: ContainerActor, storage_driver: str) -> dict[str, Any]:
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
            **health_view(actor),
        },
        "RestartCount": s.restart_count,
        "RestartReason": s.last_restart_reason,
        "LogPath": str(actor.files.log_path),
        "Driver": storage_driver,
        "HostConfig": {
            "Runtime": c.runtime,
            "RestartPolicy": {"Name": actor.restart_policy.name,
                              "MaximumRetryCount": actor.restart_policy.max_retries},
            "AutoRemove": c.auto_remove,
            "Binds": [format_bind(b) for b in c.binds],
            "Tmpfs": {t.destination: t.options for t in c.tmpfs if not t.from_mount},
            "ReadonlyRootfs": c.read_only,
            "Init": c.init,
            "Memory": c.memory or 0,
            "NanoCpus": int((c.cpus or 0) * 1e9),
            "CpuShares": c.cpu_shares or 0,
            "CpusetCpus": c.cpuset_cpus,
            "CpusetMems": c.cpuset_mems,
            "PidsLimit": c.pids_limit,
            "NetworkMode": c.network_mode,
            "CapAdd": c.cap_add,
            "CapDrop": c.cap_drop,
            "PortBindings": port_bindings(actor),
            **host_options_view(c),
        },
        "Config": {
            "Hostname": c.hostname or c.id[:12],
            "Domainname": c.domainname,
            "User": c.user,
            "Env": c.env,
            "Cmd": c.cmd,
            "Entrypoint": c.entrypoint or None,  # none given or reset: dockerd's null
            "WorkingDir": c.workdir,
            "Image": c.image,
            "Labels": c.labels,
            "StopSignal": c.stop_signal,
            "StopTimeout": c.stop_timeout,
            "Tty": c.tty,
            "OpenStdin": c.open_stdin,
            "StdinOnce": c.stdin_once,
            **({"Healthcheck": c.healthcheck.to_docker()} if c.healthcheck else {}),
            **({"Healthcheck": dict(c.healthcheck_disabled)} if c.healthcheck_disabled and not c.healthcheck else {}),
        },
        "Mounts": mounts_view(c, s),
        "NetworkSettings": {
            "IPAddress": s.ip_address,
            "Networks": {k: v for k, v in s.network_details.items() if not k.startswith("_")},
            "Ports": published_ports(actor),
        },
    }


def host_options_view(c: Any) -> dict[str, Any]:
    """docker's HostConfig fields of the host options (engine.supervisor.host_options)."""
    return {
        "Privileged": c.privileged,
        "SecurityOpt": list(c.security_opt) or None,
        "Sysctls": dict(c.sysctls) or None,
        "Ulimits": [{"Name": name, "Soft": soft, "Hard": hard} for name, (soft, hard) in c.ulimits.items()] or None,
        "ShmSize": c.shm_size or 64 * 1024 * 1024,
        "OomScoreAdj": c.oom_score_adj or 0,
        "GroupAdd": list(c.group_add) or None,
        "PidMode": "host" if c.namespaces.get("pid") == "host" else "",
        "IpcMode": "host" if c.namespaces.get("ipc") == "host" else "private",
        "UTSMode": "host" if c.namespaces.get("uts") == "host" else "",
        "MemorySwap": c.memory_swap or 0,
        "CpuQuota": c.cpu_quota or 0,
        "CpuPeriod": c.cpu_period or 0,
        "Devices": [_device_view(d) for d in c.devices] or None,
        "MemoryReservation": c.memory_reservation or 0,
        "OomKillDisable": c.oom_kill_disable,
    }


def _device_view(spec: str) -> dict[str, str]:
    host, _, rest = spec.partition(":")
    container, _, permissions = rest.partition(":")
    return {"PathOnHost": host, "PathInContainer": container or host, "CgroupPermissions": permissions or "rwm"}


def list_filter(filters: dict[str, list[str]]) -> Any:
    allowed = {"id", "name", "status", "label", "ancestor", "exited", "health"}
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
            if key == "health" and health_word(actor) not in values:
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
        actor = await containers(ctx).create(p)
        return {"Id": actor.id, "Name": actor.name, "Warnings": []}

    @table.method("container.start", params=StartParams, stream=True, input=True)
    async def start(ctx: CallContext, p: StartParams, stream: StreamSender,
                    input: StreamInput) -> dict[str, Any]:
        """Start a container. With attach, stream its output until it exits and return
        its exit code (docker start -a); a container created with a terminal or an open
        stdin (tty, open_stdin) takes the client's input items (stdin, eof, resize,
        signal: see the README) and may be left with the detach keys ({"Detached": true})."""
        return await containers(ctx).start(p.id, stream.send if p.attach else None, input, p.detach_keys)

    @table.method("container.run", params=RunParams, stream=True, input=True)
    async def run(ctx: CallContext, p: RunParams, stream: StreamSender,
                  input: StreamInput) -> dict[str, Any]:
        """Create and start a container in one call (docker run). Attached (the default):
        stream its output and return its exit code, after its removal with auto_remove.
        With tty or open_stdin, the client's input items (stdin, eof, resize, signal) go to
        the container and the detach keys leave it running ({"Detached": true}).
        Detached: return once it runs. A failed start keeps its error and adds details
        container_id and exit_code (126/127: the command could not be run / was not
        found); with auto_remove the container is removed before the reply."""
        return await containers(ctx).run(p, stream.send, input)

    @table.method("container.attach", params=AttachParams, stream=True, input=True)
    async def attach(ctx: CallContext, p: AttachParams, stream: StreamSender,
                     input: StreamInput) -> dict[str, Any]:
        """Join a running container's stdio (docker attach): its output from now on; the
        client's input items (stdin when the container keeps one open and stdin is true,
        eof, resize, signal). Ends with its exit code, or {"Detached": true} when the
        detach keys came (a terminal only; default ctrl-p,ctrl-q)."""
        return await containers(ctx).attach(p, stream.send, input)

    @table.method("container.resize", params=ResizeParams)
    async def resize(ctx: CallContext, p: ResizeParams) -> dict[str, Any]:
        """Set the window size of a running container's terminal."""
        await containers(ctx).resize(p.id, p.rows, p.cols)
        return {}

    @table.method("container.stop", params=StopParams)
    async def stop(ctx: CallContext, p: StopParams) -> dict[str, Any]:
        """Stop a container: its stop signal, then SIGKILL after the timeout (whole
        seconds, -1: wait for ever). kill and remove --force cut a pending stop short."""
        return await containers(ctx).stop(p.id, p.timeout, p.signal)

    @table.method("container.restart", params=StopParams)
    async def restart(ctx: CallContext, p: StopParams) -> dict[str, Any]:
        """Stop (if running) and start again."""
        return await containers(ctx).restart(p.id, p.timeout)

    @table.method("container.kill", params=KillParams)
    async def kill(ctx: CallContext, p: KillParams) -> dict[str, Any]:
        """Send a signal to the container's main process."""
        return await containers(ctx).kill(p.id, p.signal)

    @table.method("container.pause", params=RefParams)
    async def pause(ctx: CallContext, p: RefParams) -> dict[str, Any]:
        """Freeze every process of the container."""
        return await containers(ctx).pause(p.id)

    @table.method("container.unpause", params=RefParams)
    async def unpause(ctx: CallContext, p: RefParams) -> dict[str, Any]:
        """Thaw a paused container."""
        return await containers(ctx).unpause(p.id)

    @table.method("container.remove", params=RemoveParams)
    async def remove(ctx: CallContext, p: RemoveParams) -> dict[str, Any]:
        """Remove a container (force: kill it first)."""
        return await containers(ctx).remove(p.id, p.force, p.volumes)

    @table.method("container.rename", params=RenameParams)
    async def rename(ctx: CallContext, p: RenameParams) -> dict[str, Any]:
        """Give a container a new name."""
        await containers(ctx).rename(p.id, p.name)
        return {"name": p.name}

    @table.method("container.list", params=ListParams)
    async def list_(ctx: CallContext, p: ListParams) -> list[dict[str, Any]]:
        """List containers (running only unless all)."""
        match = list_filter(p.filters)
        found = [
            summary(actor) for actor in containers(ctx).supervisor.all()
            if (p.all or actor.status.state in ACTIVE or "status" in p.filters) and match(actor)
        ]
        return found[: p.limit] if p.limit >= 0 else found

    @table.method("container.inspect", params=RefParams)
    async def inspect_(ctx: CallContext, p: RefParams) -> dict[str, Any]:
        """Low-level information on a container (docker inspect's shape)."""
        return inspect(containers(ctx).get(p.id), ctx.app.config.storage_driver)

    @table.method("container.wait", params=WaitParams)
    async def wait(ctx: CallContext, p: WaitParams) -> dict[str, Any]:
        """Wait until the container is not running (condition not-running, the default),
        until its next exit (next-exit) or until it is removed (removed); returns its
        exit code."""
        return await wait_condition(containers(ctx), p.id, p.condition)

    @table.method("container.logs", params=LogsParams, stream=True)
    async def logs(ctx: CallContext, p: LogsParams, stream: StreamSender) -> dict[str, Any]:
        """The container's output: tail, since/until, follow."""
        async for record in containers(ctx).logs(p):
            await stream.send(record.to_wire(p.timestamps))
        return {}

    @table.method("container.exec", params=ExecParams, stream=True, input=True)
    async def exec_(ctx: CallContext, p: ExecParams, stream: StreamSender,
                    input: StreamInput) -> dict[str, Any]:
        """Run a command in a running container; stream its output, return its exit code
        (127: command not found, 126: not executable). stdin: the client's stdin items
        feed it; tty: it gets a pseudo-terminal (resize items set its size)."""
        return await containers(ctx).exec(p, stream.send, input)

    @table.method("container.prune", params=PruneParams)
    async def prune(ctx: CallContext, p: PruneParams) -> dict[str, Any]:
        """Remove every stopped container; filters until (created before), label, label!."""
        from engine.supervisor.system import container_filter

        own = {k: v for k, v in p.filters.items() if k in ("until", "label!")}
        rest, extra = list_filter({k: v for k, v in p.filters.items() if k not in own}), container_filter(own)
        return {"ContainersDeleted": await containers(ctx).prune(lambda a: rest(a) and extra(a))}
