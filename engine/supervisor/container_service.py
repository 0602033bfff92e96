"""Container operations as the API offers them: one method per RPC verb.

``CreateSpec`` is what a client asks for (the RPC structures ``container.create``'s
params straight into it); ``build_config`` checks it against the image, the runtimes and
the network and turns it into the container's ``ContainerConfig``. Every change to a
container then goes to its actor as a typed command.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import attrs
import trio

from engine.actors import commands as c
from engine.actors.container import ContainerActor, parse_signal, start_exit_code
from engine.actors.logs import LogRecord, follow, read_log
from engine.actors.model import BindMount, ContainerConfig, TmpfsMount
from engine.actors.restart import RestartPolicy
from engine.actors.state import ACTIVE, ContainerState
from engine.errors import Conflict, EngineError, InvalidArgument, NotFound
from engine.supervisor.app import App
from engine.supervisor.containers import ContainerSupervisor
from engine.volumes.specs import is_bind_spec

log = logging.getLogger("engine.containers")

AUTO_REMOVE_WAIT = 30.0  # seconds an attached `run --rm` waits for the removal
FAILED_RUN_REMOVE_WAIT = 30.0  # seconds a `run --rm` whose start failed waits for the removal
EXEC_OUTPUT_IDLE = 0.1  # seconds without output, after an exec's process ended, to stop reading
MAX_STOP_TIMEOUT = 10 * 365 * 24 * 3600  # seconds; docker's -1 means for ever

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
    pids_limit: int | None = None
    restart: str = "no"
    auto_remove: bool = False
    labels: dict[str, str] = attrs.field(factory=dict)
    runtime: str = ""
    stop_signal: str = ""
    stop_timeout: int | None = None
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
class RunSpec(CreateSpec):
    """container.run: everything container.create takes, and whether to stay attached."""

    detach: bool = False


@attrs.frozen
class ExecSpec:
    id: str
    cmd: list[str]
    env: list[str] = attrs.field(factory=list)
    workdir: str = ""
    user: str = ""


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
    if p.cpus is not None and not 0 < p.cpus < math.inf:
        raise InvalidArgument("--cpus must be a positive number")
    for item in p.env:
        if "=" not in item:
            raise InvalidArgument(f"invalid environment entry {item!r}: expected KEY=VALUE")
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
        binds=[parse_volume(v) for v in p.volumes if is_bind_spec(v)],
        tmpfs=[parse_tmpfs(t) for t in p.tmpfs],
        read_only=p.read_only,
        init=p.init,
        memory=p.memory,
        cpus=p.cpus,
        pids_limit=p.pids_limit,
        restart_policy=str(policy),
        auto_remove=p.auto_remove,
        labels={**(img.labels or {}), **p.labels},
        stop_signal=p.stop_signal or img.stop_signal or "SIGTERM",
        stop_timeout=10.0 if stop_timeout is None else stop_timeout,
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
        log_driver=p.log_driver,
        log_opts=dict(p.log_opts),
    )
    from engine.actors.logs import LogPolicy

    LogPolicy.resolve(config, app.config.log_driver, app.config.log_opts)  # a clear error now
    return config, list(p.publish)


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

    async def start(self, ref: str, send: Send | None = None) -> dict[str, Any]:
        """Start; with ``send``, stream the output until the exit (docker start -a)."""
        actor = self.get(ref)
        if send is None:
            await actor.call(c.Start())
            return {"Id": actor.id}
        return await self._start_attached(actor, send, self._start_plain)

    async def run(self, spec: RunSpec, send: Send) -> dict[str, Any]:
        """Create and start in one call (docker run). Attached: stream the output and return
        the exit code, after the removal with auto_remove. A failed start keeps its error and
        adds details container_id and exit_code; a ``--rm`` container is removed first."""
        actor = await self.create(spec)
        if spec.detach:
            await self._start_for_run(actor)
            return {"Id": actor.id, "Warnings": []}
        return await self._start_attached(actor, send, self._start_for_run)

    async def _start_plain(self, actor: ContainerActor) -> None:
        await actor.call(c.Start())

    async def _start_for_run(self, actor: ContainerActor) -> None:
        try:
            await actor.call(c.Start())
        except EngineError as e:
            e.details["container_id"] = actor.id
            e.details["exit_code"] = start_exit_code(e)
            if actor.config.auto_remove:
                await self._remove_after_failed_start(actor)
            raise

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
                              start: Callable[[ContainerActor], Awaitable[None]]) -> dict[str, Any]:
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
                await send(record.to_wire(False))
            status = actor.status
            result = {"Id": actor.id, "ExitCode": status.exit_code, "OOMKilled": status.oom_killed}
        finally:
            actor.detach()
        if actor.config.auto_remove:
            with trio.move_on_after(AUTO_REMOVE_WAIT):
                await actor.wait_for(lambda _status: False)
        return result

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
        await self.supervisor.rename(ref, name)

    async def connect(self, ref: str, network: str, aliases: list[str]) -> None:
        await self.get(ref).call(c.Connect(network, list(aliases)))

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
        records, offset = await trio.to_thread.run_sync(
            lambda: read_log(actor.files.log_path, since=spec.since, until=spec.until, tail=spec.tail))
        for record in records:
            yield record
        if spec.follow and actor.status.state in ACTIVE:
            started_at = actor.status.started_at

            def finished() -> bool:
                return actor.removed or actor.status.started_at != started_at or actor.status.state not in ACTIVE

            async for record in follow(actor.files.log_path, offset, finished=finished, changes=actor.changes):
                if spec.until is not None and record.time > spec.until:
                    break
                yield record

    async def exec(self, spec: ExecSpec, send: Send) -> dict[str, Any]:
        """Run a command in a running container; stream its output, return its exit code.
        The actor starts the session (so it cannot race a removal) and kills it if the
        container goes; the output is pumped here, outside the actor's mailbox."""
        actor = self.get(spec.id)
        session: c.ExecSession = await actor.call(
            c.ExecStart(list(spec.cmd), list(spec.env), spec.workdir, spec.user))
        code = 255
        try:
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
