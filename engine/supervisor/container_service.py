"""Container operations as the API offers them: one method per RPC verb.

``CreateSpec`` is what a client asks for (the RPC structures ``container.create``'s
params straight into it); ``build_config`` checks it against the image, the runtimes and
the network and turns it into the container's ``ContainerConfig``. Every change to a
container then goes to its actor as a typed command.
"""

from __future__ import annotations

import logging
import math
import os
import posixpath
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import attrs
import trio

from engine.actors import commands as c
from engine.actors.container import ContainerActor, parse_signal, start_exit_code
from engine.actors.health import disabled_healthcheck, health_config
from engine.actors.logs import LogRecord, follow, scan_records, start_scan
from engine.actors.model import BindMount, ContainerConfig, TmpfsMount
from engine.actors.restart import RestartPolicy
from engine.actors.state import ACTIVE, ContainerState
from engine.actors.verbs import MAX_CPU_SHARES, MIN_CPU_SHARES, check_cpus, check_cpuset
from engine.errors import Conflict, EngineError, InvalidArgument, NotFound
from engine.images.views import image_healthcheck
from engine.network.ports import parse_expose
from engine.supervisor.app import App
from engine.supervisor.attach import (
    DetachMatcher,
    InputHandlers,
    exec_handlers,
    feed_input,
    parse_detach_keys,
    pump_attach,
)
from engine.supervisor.containers import ContainerSupervisor
from engine.volumes.specs import bind_options, is_bind_spec

log = logging.getLogger("engine.containers")

AUTO_REMOVE_WAIT = 30.0  # seconds an attached `run --rm` waits for the removal
FAILED_RUN_REMOVE_WAIT = 30.0  # seconds a `run --rm` whose start failed waits for the removal
EXEC_OUTPUT_IDLE = 0.1  # seconds without output, after an exec's process ended, to stop reading
MAX_STOP_TIMEOUT = 10 * 365 * 24 * 3600  # seconds; docker's -1 means for ever
# Sizes a create may ask for (issue 16.6): labels travel in every event of the container and
# stay in the event history; the kernel refuses one environment string over 128 KiB
# (MAX_ARG_STRLEN) and an exec whose arguments and environment pass ~2 MiB.
MAX_LABELS_BYTES = 256 * 1024
MAX_ENV_ENTRY_BYTES = 128 * 1024 - 1
MAX_ENV_BYTES = 1024 * 1024
# Mount destinations the runtime must own: a mount there hides or breaks the container.
RESERVED_DESTINATIONS = ("/proc", "/sys")

Send = Callable[[dict[str, Any]], Awaitable[None]]


@attrs.frozen
class CreateSpec:
    image: str
    name: str = ""
    cmd: list[str] | None = None
    entrypoint: list[str] | None = None
    env: list[str] = attrs.field(factory=list)
    workdir: str = ""
    user: str = ""
    hostname: str = ""
    domainname: str = ""
    volumes: list[str] = attrs.field(factory=list)  # -v SRC:DST[:ro], -v NAME:DST, -v DST
    mounts: list[str] = attrs.field(factory=list)  # --mount type=…,src=…,dst=…
    volumes_from: list[str] = attrs.field(factory=list)  # --volumes-from CTR[:ro|rw]
    log_driver: str = ""
    log_opts: dict[str, str] = attrs.field(factory=dict)
    tmpfs: list[str] = attrs.field(factory=list)  # --tmpfs DST[:opts]
    read_only: bool = False
    init: bool = False
    memory: int | None = None
    cpus: float | None = None
    cpu_shares: int | None = None  # docker's -c/--cpu-shares: relative CPU weight
    cpuset_cpus: str = ""
    cpuset_mems: str = ""
    pids_limit: int | None = None
    restart: str = "no"
    auto_remove: bool = False
    labels: dict[str, str] = attrs.field(factory=dict)
    runtime: str = ""
    stop_signal: str = ""
    stop_timeout: int | None = None
    network: str = ""
    network_aliases: list[str] = attrs.field(factory=list)
    ip: str = ""  # --ip: the container's IPv4 address on its (user) network
    mac_address: str = ""  # --mac-address: its interface's on that network
    publish: list[str] = attrs.field(factory=list)
    publish_all: bool = False
    expose: list[str] = attrs.field(factory=list)
    dns: list[str] = attrs.field(factory=list)
    dns_search: list[str] = attrs.field(factory=list)
    dns_options: list[str] = attrs.field(factory=list)
    add_hosts: list[str] = attrs.field(factory=list)
    cap_add: list[str] = attrs.field(factory=list)
    cap_drop: list[str] = attrs.field(factory=list)
    platform: str = ""
    tty: bool = False  # -t: a pseudo-terminal
    open_stdin: bool = False  # -i: stdin kept open for attached clients
    stdin_once: bool = False  # close it when the first attached client's stdin ends
    # health checks (docker's --health-*; seconds)
    health_cmd: str = ""
    health_test: list[str] = attrs.field(factory=list)  # docker's whole Test: ["CMD", ...]
    health_interval: float | None = None
    health_timeout: float | None = None
    health_start_period: float | None = None
    health_retries: int | None = None
    no_healthcheck: bool = False
    # docker's host options (engine.supervisor.host_options)
    privileged: bool = False
    security_opt: list[str] = attrs.field(factory=list)  # no-new-privileges[:bool], seccomp=unconfined|JSON
    sysctls: dict[str, str] = attrs.field(factory=dict)
    ulimits: list[str] = attrs.field(factory=list)  # name=soft[:hard]
    shm_size: int | None = None  # bytes
    oom_score_adj: int | None = None
    group_add: list[str] = attrs.field(factory=list)
    pid: str = ""  # "" | host
    ipc: str = ""  # "" | host | private | shareable | none
    uts: str = ""  # "" | host
    memory_swap: int | None = None  # bytes of memory + swap; -1 unlimited
    cpu_quota: int | None = None  # microseconds
    cpu_period: int | None = None  # microseconds
    memory_reservation: int | None = None  # bytes
    oom_kill_disable: bool = False
    devices: list[str] = attrs.field(factory=list)  # HOST[:CONTAINER[:rwm]]


@attrs.frozen
class RunSpec(CreateSpec):
    """container.run: everything container.create takes, and whether to stay attached."""

    detach: bool = False
    detach_keys: str = ""  # with a terminal; "" is ctrl-p,ctrl-q


@attrs.frozen
class AttachSpec:
    id: str
    stdin: bool = True  # pass the client's stdin on (if the container keeps one open)
    detach_keys: str = ""


@attrs.frozen
class ExecSpec:
    id: str
    cmd: list[str]
    env: list[str] = attrs.field(factory=list)
    workdir: str = ""
    user: str = ""
    stdin: bool = False  # -i: the client's stdin feeds the command
    tty: bool = False  # -t: the command gets a pseudo-terminal


@attrs.frozen
class LogsSpec:
    id: str
    follow: bool = False
    tail: int | None = None
    since: float | None = None
    until: float | None = None
    timestamps: bool = False


def stop_grace(timeout: int | None) -> float | None:
    """docker's ``stop -t``: whole seconds, -1 waits for ever; None: the container's own."""
    if timeout is None:
        return None
    if timeout == -1:
        return math.inf
    if not 0 <= timeout <= MAX_STOP_TIMEOUT:
        raise InvalidArgument(f"invalid stop timeout {timeout}: use whole seconds from 0 to "
                              f"{MAX_STOP_TIMEOUT}, or -1 to wait for ever")
    return float(timeout)


def check_domainname(domainname: str) -> str:
    """``--domainname``: what the kernel takes as a UTS domain name (at most 64 bytes);
    spaces or control characters would only fail later, in the runtime."""
    if len(domainname.encode()) > 64:
        raise InvalidArgument(f"--domainname {domainname[:20]!r}... is longer than 64 bytes, the kernel's limit")
    if any(ch.isspace() or not ch.isprintable() for ch in domainname):
        raise InvalidArgument(f"--domainname {domainname!r} has spaces or control characters; give a DNS "
                              "domain such as example.com")
    return domainname


def check_sizes(p: CreateSpec) -> None:
    """Labels and environment within what the daemon keeps and the kernel takes."""
    label_bytes = sum(len(k.encode()) + len(v.encode()) for k, v in p.labels.items())
    if label_bytes > MAX_LABELS_BYTES:
        raise InvalidArgument(f"labels too large: {label_bytes} bytes, the limit is {MAX_LABELS_BYTES}")
    env_bytes = 0
    for item in p.env:
        size = len(item.encode())
        if size > MAX_ENV_ENTRY_BYTES:
            raise InvalidArgument(f"environment entry {item[:40]!r}… too large: {size} bytes, "
                                  f"the limit is {MAX_ENV_ENTRY_BYTES}")
        env_bytes += size + 1
    if env_bytes > MAX_ENV_BYTES:
        raise InvalidArgument(f"environment too large: {env_bytes} bytes, the limit is {MAX_ENV_BYTES}")


def check_destination(spec: str, destination: str, what: str) -> str:
    """A mount destination normalised: absolute, not ``/``, not /proc or /sys (or under)."""
    if not destination.startswith("/"):
        raise InvalidArgument(f"invalid {what} {spec!r}: the destination must be an absolute path")
    normal = posixpath.normpath("/" + destination.lstrip("/"))
    if normal == "/":
        raise InvalidArgument(f"invalid {what} {spec!r}: the destination cannot be '/'")
    for reserved in RESERVED_DESTINATIONS:
        if normal == reserved or normal.startswith(reserved + "/"):
            raise InvalidArgument(
                f"invalid {what} {spec!r}: {reserved} belongs to the runtime; choose another destination")
    return normal


def check_bind_sources(binds: list[BindMount]) -> None:
    """Blocking: every bind source exists (docker refuses a missing one at create)."""
    for bind in binds:
        if not os.path.exists(bind.source):
            raise InvalidArgument(
                f"invalid volume {bind.source}:{bind.destination}: bind source path does not "
                f"exist: {bind.source}")


def parse_volume(spec: str) -> BindMount:
    parts = spec.split(":")
    if len(parts) == 1:
        raise InvalidArgument(
            f"invalid volume {spec!r}: anonymous volumes are not supported yet; use HOST_PATH:CONTAINER_PATH[:ro]"
        )
    if len(parts) > 3:
        raise InvalidArgument(f"invalid volume {spec!r}: expected SRC:DST[:ro|rw]")
    source, destination = parts[0], parts[1]
    read_only, propagation = bind_options(spec, parts[2] if len(parts) == 3 else "rw")
    if not source.startswith("/"):
        raise InvalidArgument(
            f"invalid volume {spec!r}: the source must be an absolute host path (named volumes are not supported yet)"
        )
    destination = check_destination(spec, destination, "volume")
    return BindMount(source, destination, read_only, propagation)


def parse_tmpfs(spec: str) -> TmpfsMount:
    destination, _, options = spec.partition(":")
    destination = check_destination(spec, destination, "--tmpfs")
    return TmpfsMount(destination, options)


def exposed_ports(image_ports: dict[str, Any] | None, expose: list[str]) -> dict[str, Any]:
    """The image's ``ExposedPorts`` and the container's ``--expose`` ones (what ``-P``
    publishes and ``ps`` shows), as dockerd merges them."""
    merged = dict(image_ports or {})
    for spec in expose:
        merged.update({key: {} for key in parse_expose(spec)})
    return merged


def build_config(app: App, p: CreateSpec) -> tuple[ContainerConfig, list[str]]:
    """The container's config from a create request, checked now rather than at start."""
    try:
        image = app.services.require_images().get(p.image)
    except NotFound as e:
        # Tells a client "pull first" apart from any other NotFound, without a second call.
        e.details["missing_image"] = p.image
        raise
    policy = RestartPolicy.parse(p.restart)
    if p.auto_remove and policy.name != "no":
        raise InvalidArgument("--rm and a restart policy cannot be combined (docker refuses it too)")
    for value in (p.memory, p.pids_limit):
        if value is not None and value <= 0:
            raise InvalidArgument("--memory and --pids-limit must be positive")
    if p.cpus is not None:
        check_cpus(p.cpus)
    if p.cpu_shares is not None and not MIN_CPU_SHARES <= p.cpu_shares <= MAX_CPU_SHARES:
        raise InvalidArgument(f"--cpu-shares must be between {MIN_CPU_SHARES} and {MAX_CPU_SHARES}")
    for cpuset, flag in ((p.cpuset_cpus, "--cpuset-cpus"), (p.cpuset_mems, "--cpuset-mems")):
        if cpuset:
            check_cpuset(cpuset, flag)
    check_sizes(p)
    for item in p.env:
        if "=" not in item:
            raise InvalidArgument(f"invalid environment entry {item[:100]!r}: expected KEY=VALUE")
    stop_timeout = stop_grace(p.stop_timeout)
    runtime_name = p.runtime or app.config.default_runtime
    app.runtime(runtime_name)  # a clear error now rather than at start
    img = image.config.config
    from engine.supervisor.bundle import resolve

    args, env, workdir, user = resolve(image.config, entrypoint=p.entrypoint, cmd=p.cmd,
                                       env=list(p.env), workdir=p.workdir, user=p.user)
    # Without networking, a container gets an empty network namespace.
    network_mode = p.network or app.config.default_network
    if app.services.network is None:
        network_mode = "none"
    config = ContainerConfig(
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
        domainname=check_domainname(p.domainname),
        binds=[parse_volume(v) for v in p.volumes if is_bind_spec(v)],
        tmpfs=[parse_tmpfs(t) for t in p.tmpfs],
        read_only=p.read_only,
        init=p.init,
        memory=p.memory,
        cpus=p.cpus,
        cpu_shares=p.cpu_shares,
        cpuset_cpus=p.cpuset_cpus,
        cpuset_mems=p.cpuset_mems,
        pids_limit=p.pids_limit,
        restart_policy=str(policy),
        auto_remove=p.auto_remove,
        labels={**(img.labels or {}), **p.labels},
        stop_signal=p.stop_signal or img.stop_signal or "SIGTERM",
        stop_timeout=10.0 if stop_timeout is None else stop_timeout,
        network_mode=network_mode,
        network_defaulted=not p.network,
        aliases=list(p.network_aliases),
        ipv4_address=p.ip,
        mac_address=p.mac_address,
        publish_all=p.publish_all,
        dns=list(p.dns),
        dns_search=list(p.dns_search),
        dns_options=list(p.dns_options),
        add_hosts=list(p.add_hosts),
        cap_add=list(p.cap_add),
        cap_drop=list(p.cap_drop),
        layers=list(image.diff_ids),
        image_config={"ExposedPorts": exposed_ports(img.exposed_ports, p.expose)},
        tty=p.tty,
        open_stdin=p.open_stdin,
        stdin_once=p.stdin_once and p.open_stdin,
        healthcheck=health_config(
            image_healthcheck(image.config.raw), cmd=p.health_cmd, interval=p.health_interval,
            timeout=p.health_timeout, start_period=p.health_start_period, retries=p.health_retries,
            disabled=p.no_healthcheck, test=list(p.health_test)),
        healthcheck_disabled=disabled_healthcheck(image_healthcheck(image.config.raw), disabled=p.no_healthcheck,
                                                  test=list(p.health_test), cmd=p.health_cmd),
        log_driver=p.log_driver,
        log_opts=dict(p.log_opts),
    )
    from engine.actors.logs import LogPolicy

    LogPolicy.resolve(config, app.config.log_driver, app.config.log_opts)  # a clear error now
    if has_host_options(p):
        from engine.supervisor.host_options import apply_host_options

        apply_host_options(config, p)
    return config, list(p.publish)


def has_host_options(p: CreateSpec) -> bool:
    """Whether the create gives any of docker's host options (the common create gives none,
    and pays nothing for them)."""
    return bool(p.privileged or p.security_opt or p.sysctls or p.ulimits or p.group_add or p.pid or p.ipc
                or p.uts or p.devices or p.oom_kill_disable) or any(v is not None for v in (
                    p.shm_size, p.oom_score_adj, p.memory_swap, p.cpu_quota, p.cpu_period, p.memory,
                    p.memory_reservation))


class ContainerService:
    """What the RPC handlers call: one method per verb."""

    def __init__(self, app: App) -> None:
        self.app = app

    @property
    def supervisor(self) -> ContainerSupervisor:
        return self.app.services.require_containers()

    def get(self, ref: str) -> ContainerActor:
        return self.supervisor.get(ref)

    # --- create, start, run -------------------------------------------------------------------

    async def create(self, spec: CreateSpec) -> ContainerActor:
        """Validate, build the config, let the network fill its part in, register."""
        config, publish = build_config(self.app, spec)
        await trio.to_thread.run_sync(check_bind_sources, config.binds)
        if config.devices:
            from engine.oci.devices import check_devices

            await trio.to_thread.run_sync(check_devices, config.devices)
        network = self.app.services.network
        if network is not None:
            await network.prepare_config(config, publish)
        elif publish:
            raise InvalidArgument("publishing ports needs networking, which is unavailable")
        volumes = self.app.services.volumes
        if volumes is None:
            if config.volumes or spec.mounts or spec.volumes_from or any(not is_bind_spec(v) for v in spec.volumes):
                raise InvalidArgument("volumes are unavailable in this daemon")
            return await self.supervisor.create(config)
        image_volumes = sorted(self.app.services.require_images().get(spec.image).config.config.volumes or {})
        made = await volumes.attach(config, volumes=list(spec.volumes), mounts=list(spec.mounts),
                                    volumes_from=list(spec.volumes_from), image_volumes=image_volumes)
        try:
            return await self.supervisor.create(config)
        except BaseException:
            with trio.CancelScope(shield=True):
                await volumes.discard(made)
            raise

    async def start(self, ref: str, send: Send | None = None, input: Any | None = None,
                    detach_keys: str = "") -> dict[str, Any]:
        """Start; with ``send``, stream the output until the exit (docker start -a), and
        for a container with a terminal or an open stdin, take ``input`` (start -ai)."""
        actor = self.get(ref)
        if send is None:
            await actor.call(c.Start())
            return {"Id": actor.id}
        if actor.config.tty or actor.config.open_stdin:
            return await self._start_interactive(actor, send, input, detach_keys, self._start_io_plain)
        return await self._start_attached(actor, send, self._start_io_plain)

    async def run(self, spec: RunSpec, send: Send, input: Any | None = None) -> dict[str, Any]:
        """Create and start in one call (docker run). Attached: stream the output and return
        the exit code, after the removal with auto_remove; with a terminal or an open stdin,
        ``input`` carries the client's stdin and window size. A failed start keeps its error
        and adds details container_id and exit_code; a ``--rm`` container is removed first."""
        parse_detach_keys(spec.detach_keys)  # a bad value fails before anything is created
        actor = await self.create(spec)
        if spec.detach:
            await self._start_for_run(actor)
            return {"Id": actor.id, "Warnings": []}
        if spec.tty or spec.open_stdin:
            return await self._start_interactive(actor, send, input, spec.detach_keys, self._start_io_for_run)
        return await self._start_attached(actor, send, self._start_io_for_run)

    async def _start_for_run(self, actor: ContainerActor, attach: bool = False) -> Any:
        try:
            return await actor.call(c.Start(attach=attach))
        except EngineError as e:
            e.details["container_id"] = actor.id
            e.details["exit_code"] = start_exit_code(e)
            if actor.config.auto_remove:
                await self._remove_after_failed_start(actor)
            raise

    async def _start_io_for_run(self, actor: ContainerActor) -> c.AttachSession:
        return (await self._start_for_run(actor, attach=True))["attach"]  # type: ignore[no-any-return]

    async def _start_io_plain(self, actor: ContainerActor) -> c.AttachSession:
        return (await actor.call(c.Start(attach=True)))["attach"]  # type: ignore[no-any-return]

    async def _remove_after_failed_start(self, actor: ContainerActor) -> None:
        # Shielded: a client that gave up must not leave a `--rm` container behind.
        with trio.CancelScope(shield=True), trio.move_on_after(FAILED_RUN_REMOVE_WAIT):
            try:
                await actor.call(c.Remove(force=True))
            except NotFound:
                pass  # removed meanwhile by someone else
            except EngineError as e:
                log.warning("container %s: removal after its failed start: %s", actor.name, e)

    async def _start_attached(self, actor: ContainerActor, send: Send,
                              start: Callable[[ContainerActor], Awaitable[c.AttachSession]]) -> dict[str, Any]:
        """Output only (no terminal, no stdin): from the monitor's attach socket, connected
        before the process runs, as docker's attach stream. Not from the log: a rotating log
        drops what a writer faster than the reader wrote, and conmon sends every chunk to an
        attached client (it waits for a slow one: the container slows down, nothing is lost)
        and closes the connection only once the last of the output has gone out."""
        return await self._start_interactive(actor, send, None, "", start)

    # --- attached sessions with input (engine.supervisor.attach) ---------------------------------

    async def attach(self, spec: AttachSpec, send: Send, input: Any | None) -> dict[str, Any]:
        """Join a running container's stdio (docker attach): its output from now on, the
        client's input. Returns its exit code when it ends, or Detached."""
        actor = self.get(spec.id)
        return await self._start_interactive(actor, send, input if spec.stdin else _NoStdin(input),
                                             spec.detach_keys, self._attach_running)

    async def _attach_running(self, actor: ContainerActor) -> c.AttachSession:
        return await actor.call(c.Attach())  # type: ignore[no-any-return]

    async def resize(self, ref: str, rows: int, cols: int) -> None:
        await self.get(ref).call(c.Resize(rows, cols))

    async def _start_interactive(self, actor: ContainerActor, send: Send, input: Any | None,
                                 detach_keys: str,
                                 start: Callable[[ContainerActor], Awaitable[c.AttachSession]],
                                 ) -> dict[str, Any]:
        keys = parse_detach_keys(detach_keys)
        matcher = DetachMatcher(keys) if actor.config.tty else None
        actor.attach()
        try:
            session = await start(actor)
            started_at = actor.status.started_at
            output_ended = False
            try:
                detached = await pump_attach(session.connection, send, input,
                                             self._attach_handlers(actor, session, input), matcher)
                output_ended = not detached
            finally:
                actor.notify(c.AttachEnded(session.session, detached=not output_ended))
                with trio.CancelScope(shield=True):
                    await session.connection.aclose()
            if detached:
                return {"Id": actor.id, "Detached": True}
            status = await actor.wait_for(lambda s: s.started_at != started_at or s.state not in (
                ContainerState.RUNNING, ContainerState.PAUSED))
            result = {"Id": actor.id, "ExitCode": status.exit_code, "OOMKilled": status.oom_killed}
        finally:
            actor.detach()
        if actor.config.auto_remove:
            with trio.move_on_after(AUTO_REMOVE_WAIT):
                await actor.wait_for(lambda _status: False)
        return result

    def _attach_handlers(self, actor: ContainerActor, session: c.AttachSession,
                         input: Any | None) -> InputHandlers:
        connection = session.connection
        stdin = actor.config.open_stdin and not isinstance(input, _NoStdin)

        async def close_stdin() -> None:
            if not actor.config.tty:
                connection.close_stdin()
            await trio.lowlevel.checkpoint()

        async def resize(rows: int, cols: int) -> None:
            if actor.config.tty:
                await actor.call(c.Resize(rows, cols))

        async def signal(sig: int) -> None:
            await actor.call(c.Kill(sig))

        return InputHandlers(write=connection.write if stdin else None, close_stdin=close_stdin,
                             resize=resize, signal=signal)

    # --- the other verbs --------------------------------------------------------------------------

    async def stop(self, ref: str, stop_timeout: int | None, signal: str) -> dict[str, Any]:
        grace = stop_grace(stop_timeout)
        if signal:
            parse_signal(signal)
        return await self.get(ref).call(c.Stop(grace, signal or None))  # type: ignore[no-any-return]

    async def restart(self, ref: str, stop_timeout: int | None) -> dict[str, Any]:
        return await self.get(ref).call(c.Restart(stop_grace(stop_timeout)))  # type: ignore[no-any-return]

    async def kill(self, ref: str, signal: str) -> dict[str, Any]:
        return await self.get(ref).call(c.Kill(parse_signal(signal)))  # type: ignore[no-any-return]

    async def pause(self, ref: str) -> dict[str, Any]:
        return await self.get(ref).call(c.Pause())  # type: ignore[no-any-return]

    async def unpause(self, ref: str) -> dict[str, Any]:
        return await self.get(ref).call(c.Unpause())  # type: ignore[no-any-return]

    async def remove(self, ref: str, force: bool, volumes: bool = False) -> dict[str, Any]:
        return await self.get(ref).call(c.Remove(force=force, volumes=volumes))  # type: ignore[no-any-return]

    async def rename(self, ref: str, name: str) -> None:
        container_id = self.get(ref).id
        await self.supervisor.rename(ref, name)
        network = self.app.services.network
        if network is not None:  # peers resolve the new name at once
            await network.renamed(container_id, self.get(container_id).name)

    async def connect(self, ref: str, network: str, aliases: list[str], ip: str = "") -> None:
        await self.get(ref).call(c.Connect(network, list(aliases), ip))

    async def disconnect(self, ref: str, network: str, force: bool) -> None:
        await self.get(ref).call(c.Disconnect(network, force))

    async def wait(self, ref: str) -> dict[str, Any]:
        status = await self.get(ref).wait_for(
            lambda s: s.state in (ContainerState.EXITED, ContainerState.CREATED, ContainerState.DEAD))
        return {"StatusCode": status.exit_code, "OOMKilled": status.oom_killed}

    async def prune(self, match: Callable[[ContainerActor], bool]) -> list[str]:
        removed = []
        for actor in self.supervisor.all():
            if actor.status.state in (ContainerState.EXITED, ContainerState.CREATED, ContainerState.DEAD) and match(actor):
                try:
                    await actor.call(c.Remove(force=False))
                    removed.append(actor.id)
                except (Conflict, NotFound):
                    pass
        return removed

    async def logs(self, spec: LogsSpec) -> AsyncIterator[LogRecord]:
        actor = self.get(spec.id)
        if spec.tail is not None and spec.tail < 0:
            raise InvalidArgument("--tail must be 0 or more")
        # Whether to follow is decided before the log is read: a container that writes and
        # exits between the read and the check would otherwise lose its last output.
        was_active = actor.status.state in ACTIVE
        started_at = actor.status.started_at
        # Streamed from disk a batch at a time, as the client takes them (issue 16.6),
        # across every file of the rotated log.
        scan = await trio.to_thread.run_sync(
            lambda: start_scan(actor.files.log_path, since=spec.since, until=spec.until, tail=spec.tail,
                               finished=not was_active))
        async for record in scan_records(scan):
            yield record
        position = scan.position
        if spec.follow and was_active:

            def finished() -> bool:
                return actor.removed or actor.status.started_at != started_at or actor.status.state not in ACTIVE

            async for record in follow(actor.files.log_path, position, finished=finished, changes=actor.changes):
                if spec.until is not None and record.time > spec.until:
                    break
                yield record

    async def exec(self, spec: ExecSpec, send: Send, input: Any | None = None,
                   started: Callable[[Any], Awaitable[None]] | None = None, *,
                   exec_id: str = "") -> dict[str, Any]:
        """Run a command in a running container; stream its output, return its exit code.
        The actor starts the session (so it cannot race a removal) and kills it if the
        container goes; the output is pumped here, outside the actor's mailbox.
        ``started(handle)`` hears of the session first (the Docker API records it);
        ``exec_id`` names it in its exec_start and exec_die events (else its number)."""
        actor = self.get(spec.id)
        env = list(spec.env)
        if spec.tty and not any(e.startswith("TERM=") for e in env):
            env.append("TERM=xterm")
        session: c.ExecSession = await actor.call(
            c.ExecStart(list(spec.cmd), env, spec.workdir, spec.user, stdin=spec.stdin, tty=spec.tty,
                        exec_id=exec_id))
        code = 255
        try:
            if started is not None:
                try:
                    await started(session.handle)
                except BaseException:
                    with trio.CancelScope(shield=True):
                        await session.handle.aclose()  # kills what nobody pumps
                    raise
            if input is not None and (spec.stdin or spec.tty):
                code = await pump_exec_with_input(session.handle, send, input, stdin=spec.stdin, tty=spec.tty)
            else:
                code = await pump_exec(session.handle, send)
        finally:
            actor.notify(c.ExecEnded(session.session, code))
        return {"ExitCode": code}


async def pump_exec(handle: Any, send: Send) -> int:
    """Forward an exec's stdout/stderr as stream items; return its exit code.

    The exec ends when its process does: output still in flight is forwarded while it keeps
    coming, then reading stops. Processes it started in the background keep running (and
    may keep the pipes open): docker's exec returns all the same."""
    received = [0]
    open_streams = [0]
    all_closed = trio.Event()

    async def forward(name: str, source: Any) -> None:
        open_streams[0] += 1
        try:
            async for chunk in source:
                received[0] += 1
                await send({"stream": name, "data": chunk})
        finally:
            open_streams[0] -= 1
            if open_streams[0] == 0:
                all_closed.set()

    async with handle:  # leaving early (client gone) kills the exec'd process
        async with trio.open_nursery() as nursery:
            nursery.start_soon(forward, "stdout", handle.stdout)
            nursery.start_soon(forward, "stderr", handle.stderr)
            code = int(await handle.wait())
            while True:
                seen = received[0]
                with trio.move_on_after(EXEC_OUTPUT_IDLE):
                    await all_closed.wait()
                if all_closed.is_set() or received[0] == seen:
                    break
            nursery.cancel_scope.cancel()
        return code


async def pump_exec_with_input(handle: Any, send: Send, input: Any, *, stdin: bool, tty: bool) -> int:
    """``pump_exec``, and the client's input (stdin, window size, signals) meanwhile."""
    handlers = exec_handlers(handle, stdin=stdin, tty=tty)
    async with trio.open_nursery() as nursery:

        async def feed() -> None:
            await feed_input(input, handlers, None)

        nursery.start_soon(feed)
        code = await pump_exec(handle, send)
        nursery.cancel_scope.cancel()
    return code


class _NoStdin:
    """The input of an attach without stdin (``--no-stdin``): window sizes and signals
    still count, stdin data is dropped."""

    def __init__(self, input: Any | None) -> None:
        self._input = input

    def __aiter__(self) -> Any:
        return self._iterate()

    async def _iterate(self) -> Any:
        if self._input is None:
            return
        async for item in self._input:
            if isinstance(item, dict) and ("stdin" in item or "eof" in item):
                continue
            yield item
