"""container.* methods for the everyday verbs: update, top, stats, copy (cp), diff,
export, commit."""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import attrs
import trio

from engine.actors import commands as c
from engine.actors.container import ContainerActor
from engine.actors.state import ContainerState
from engine.errors import InvalidArgument
from engine.rpc.methods import MethodTable
from engine.rpc.server import CallContext, StreamSender
from engine.supervisor import commit
from engine.supervisor import copy as cp
from engine.supervisor import stats as st
from engine.supervisor.container_service import ContainerService

MIN_STATS_INTERVAL = 0.1


@attrs.frozen
class UpdateParams:
    id: str
    memory: int | None = None
    cpus: float | None = None
    pids_limit: int | None = None
    restart: str | None = None


@attrs.frozen
class TopParams:
    id: str
    ps_args: list[str] = attrs.field(factory=list)


@attrs.frozen
class StatsParams:
    ids: list[str] = attrs.field(factory=list)  # none: every running container (all: every one)
    all: bool = False
    stream: bool = True
    interval: float = 1.0


def containers(ctx: CallContext) -> ContainerService:
    return ContainerService(ctx.app)


def _target(actor: ContainerActor) -> st.Target:
    running = actor.status.state in (ContainerState.RUNNING, ContainerState.PAUSED)
    return st.Target(actor.id, actor.name, actor.status.pid if running else 0)


def _stats_targets(service: ContainerService, p: StatsParams) -> list[st.Target]:
    if p.ids:
        return [_target(service.get(ref)) for ref in p.ids]
    return [_target(a) for a in service.supervisor.all()
            if p.all or a.status.state in (ContainerState.RUNNING, ContainerState.PAUSED)]


def register(table: MethodTable) -> None:
    register_copy(table)
    register_layers(table)

    @table.method("container.update", params=UpdateParams)
    async def update(ctx: CallContext, p: UpdateParams) -> dict[str, Any]:
        """Change a container's memory, CPU and pids limits (applied to the running
        container's cgroup at once) and its restart policy; kept for later starts."""
        actor = containers(ctx).get(p.id)
        return await actor.call(c.Update(p.memory, p.cpus, p.pids_limit, p.restart))  # type: ignore[no-any-return]

    @table.method("container.top", params=TopParams)
    async def top(ctx: CallContext, p: TopParams) -> dict[str, Any]:
        """The container's processes as ``ps`` shows them (ps_args: ps options, default
        -ef; the output must have a PID column)."""
        actor = containers(ctx).get(p.id)
        return await st.top(_target(actor).pid, list(p.ps_args))

    @table.method("container.stats", params=StatsParams, stream=True)
    async def stats(ctx: CallContext, p: StatsParams, stream: StreamSender) -> dict[str, Any]:
        """Resource usage from the cgroups: one item per interval holding a list with
        every container (CPU %, memory usage/limit, network and block I/O, pids). Without
        stream: one item, after two samples one interval apart (CPU % needs both)."""
        if not MIN_STATS_INTERVAL <= p.interval <= 3600:
            raise InvalidArgument(f"stats interval must be {MIN_STATS_INTERVAL} to 3600 seconds")
        service = containers(ctx)
        sampler = st.Sampler()
        await sampler.tick(_stats_targets(service, p))
        while True:
            await trio.sleep(p.interval)
            items = await sampler.tick(_stats_targets(service, p))
            await stream.send(items)
            if not p.stream:
                return {}


# --- cp, export ----------------------------------------------------------------------------------


@attrs.frozen
class PathParams:
    id: str
    path: str
    follow_link: bool = False


@attrs.frozen
class UploadChunkParams:
    upload: str
    data: bytes


@attrs.frozen
class UploadParams:
    upload: str


@attrs.frozen
class CopyToParams:
    id: str
    path: str
    upload: str
    copy_uid_gid: bool = False


def uploads(ctx: CallContext) -> cp.Uploads:
    return cp.Uploads(ctx.app.layout.root / "uploads")


@contextlib.asynccontextmanager
async def open_root(actor: ContainerActor) -> AsyncIterator[int]:
    fd: int = await actor.call(c.OpenRootfs())
    try:
        yield fd
    finally:
        os.close(fd)
        actor.notify(c.ReleaseRootfs())


async def stream_from_thread(work: Callable[[Callable[[bytes], None]], Any], send: Send) -> Any:
    """Run ``work(emit)`` in a worker thread; each chunk it emits is sent as a stream item
    ``{"data": chunk}``, with the client's backpressure reaching the thread. Cancelling
    (the client went away) makes the thread's next ``emit`` fail, so it ends."""
    sender, receiver = trio.open_memory_channel[bytes](4)
    result: list[Any] = []

    def emit(chunk: bytes) -> None:
        trio.from_thread.run(sender.send, chunk)

    async def produce() -> None:
        async with sender:
            result.append(await trio.to_thread.run_sync(work, emit))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(produce)
        async with receiver:
            async for chunk in receiver:
                await send({"data": chunk})
    return result[0] if result else None


Send = Callable[[dict[str, Any]], Awaitable[None]]


def register_copy(table: MethodTable) -> None:
    @table.method("container.stat_path", params=PathParams)
    async def stat_path(ctx: CallContext, p: PathParams) -> dict[str, Any]:
        """What a path in the container is (name, size, mode, mtime, is_dir, link_target);
        symlinks resolve inside the container."""
        async with open_root(containers(ctx).get(p.id)) as root:
            return await trio.to_thread.run_sync(
                functools.partial(cp.describe_path, root, p.path, follow=p.follow_link))

    @table.method("container.copy_from", params=PathParams, stream=True)
    async def copy_from(ctx: CallContext, p: PathParams, stream: StreamSender) -> dict[str, Any]:
        """A tar of a path in the container (running or not), streamed as items
        ``{"data": bytes}``; its top entry is named after the path's last component.
        follow_link: a symlink named by the path is followed (inside the container)."""
        async with open_root(containers(ctx).get(p.id)) as root:
            info = await trio.to_thread.run_sync(
                functools.partial(cp.describe_path, root, p.path, follow=p.follow_link))
            await stream_from_thread(
                lambda emit: cp.archive_path(root, p.path, emit, follow=p.follow_link), stream.send)
        return {"stat": info}

    @table.method("container.upload_begin")
    async def upload_begin(ctx: CallContext, p: Any) -> dict[str, Any]:
        """Start an upload of a tar for container.copy_to; send it with upload_chunk."""
        return {"upload": await trio.to_thread.run_sync(uploads(ctx).begin)}

    @table.method("container.upload_chunk", params=UploadChunkParams)
    async def upload_chunk(ctx: CallContext, p: UploadChunkParams) -> dict[str, Any]:
        """Append bytes to an upload (any size up to the frame limit; 1 MiB is good)."""
        size = await trio.to_thread.run_sync(uploads(ctx).append, p.upload, p.data)
        return {"size": size}

    @table.method("container.upload_discard", params=UploadParams)
    async def upload_discard(ctx: CallContext, p: UploadParams) -> dict[str, Any]:
        """Drop an unfinished upload."""
        await trio.to_thread.run_sync(uploads(ctx).discard, p.upload)
        return {}

    @table.method("container.copy_to", params=CopyToParams)
    async def copy_to(ctx: CallContext, p: CopyToParams) -> dict[str, Any]:
        """Extract an uploaded tar at a path in the container (running or not): into it
        when it is a directory, else as it (the archive's one top entry renamed). The
        upload is consumed. copy_uid_gid keeps the archive's owners (else 0:0)."""
        store = uploads(ctx)
        path = await trio.to_thread.run_sync(store.path, p.upload)
        try:
            async with open_root(containers(ctx).get(p.id)) as root:

                def extract() -> cp.CopyInResult:
                    with open(path, "rb") as archive:
                        return cp.extract_into(root, p.path, archive, copy_uid_gid=p.copy_uid_gid)

                done = await trio.to_thread.run_sync(extract)
        finally:
            await trio.to_thread.run_sync(lambda: path.unlink(missing_ok=True))
        return {"entries": done.entries, "bytes": done.bytes}

    @table.method("container.export", params=RefParams, stream=True)
    async def export(ctx: CallContext, p: RefParams, stream: StreamSender) -> dict[str, Any]:
        """The container's filesystem (running or not) as a tar, streamed as items
        ``{"data": bytes}`` (docker export)."""
        async with open_root(containers(ctx).get(p.id)) as root:
            await stream_from_thread(lambda emit: cp.export_root(root, emit), stream.send)
        return {}


@attrs.frozen
class RefParams:
    id: str


# --- diff, commit ----------------------------------------------------------------------------------

DIFF_KINDS = {"C": 0, "A": 1, "D": 2}  # docker's Kind numbers
# files the runtime creates as targets of the engine's bind mounts: not the container's
MOUNT_POINTS = frozenset({"/etc/hostname", "/etc/hosts", "/etc/resolv.conf"})


@attrs.frozen
class CommitParams:
    id: str
    reference: str = ""
    message: str = ""
    author: str = ""
    changes: list[str] = attrs.field(factory=list)
    pause: bool = True


def register_layers(table: MethodTable) -> None:
    @table.method("container.diff", params=RefParams)
    async def diff(ctx: CallContext, p: RefParams) -> list[dict[str, Any]]:
        """The container's changes to its image's filesystem: [{Path, Kind}] with Kind 0
        changed, 1 added, 2 deleted (docker's numbers)."""
        actor = containers(ctx).get(p.id)
        found = await ctx.app.storage().changes(actor.id)
        return [{"Path": path, "Kind": DIFF_KINDS[kind]} for kind, path in found
                if not (kind == "A" and path in MOUNT_POINTS)]

    @table.method("container.commit", params=CommitParams)
    async def commit_(ctx: CallContext, p: CommitParams) -> dict[str, Any]:
        """A new image from the container's changes (docker commit): the container's run
        settings, then ``changes`` (CMD, ENTRYPOINT, ENV, EXPOSE, LABEL, USER, WORKDIR,
        VOLUME, STOPSIGNAL); ``pause`` pauses a running container meanwhile."""
        actor = containers(ctx).get(p.id)
        image = await commit.commit(ctx.app, actor, reference=p.reference, message=p.message,
                                    author=p.author, changes=list(p.changes), pause=p.pause)
        ctx.app.events.emit("container", "commit", actor.id, name=actor.name, image=image.id)
        return {"Id": image.id}
