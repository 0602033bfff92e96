"""container.* methods for the everyday verbs: update, top, stats, copy (cp), diff,
export, commit."""

from __future__ import annotations

import functools
from typing import Any

import attrs
import trio

from engine.rpc.methods import MethodTable
from engine.rpc.server import CallContext, StreamSender
from engine.supervisor import copy as cp
from engine.supervisor.container_verbs import ContainerVerbs


@attrs.frozen
class UpdateParams:
    id: str
    memory: int | None = None
    cpus: float | None = None
    pids_limit: int | None = None
    restart: str | None = None
    cpu_shares: int | None = None
    cpuset_cpus: str | None = None
    cpuset_mems: str | None = None
    memory_swap: int | None = None  # bytes of memory + swap; -1 unlimited


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


def verbs(ctx: CallContext) -> ContainerVerbs:
    return ContainerVerbs(ctx.app)


def register(table: MethodTable) -> None:
    register_copy(table)
    register_layers(table)

    @table.method("container.update", params=UpdateParams)
    async def update(ctx: CallContext, p: UpdateParams) -> dict[str, Any]:
        """Change a container's memory, CPU and pids limits, CPU shares and cpusets
        (applied to the running container's cgroup at once) and its restart policy; kept for
        later starts."""
        return await verbs(ctx).update(p.id, memory=p.memory, cpus=p.cpus, pids_limit=p.pids_limit,
                                       restart=p.restart, cpu_shares=p.cpu_shares,
                                       cpuset_cpus=p.cpuset_cpus, cpuset_mems=p.cpuset_mems,
                                       memory_swap=p.memory_swap)

    @table.method("container.top", params=TopParams)
    async def top(ctx: CallContext, p: TopParams) -> dict[str, Any]:
        """The container's processes as ``ps`` shows them (ps_args: ps options, default
        -ef; the output must have a PID column)."""
        return await verbs(ctx).top(p.id, list(p.ps_args))

    @table.method("container.stats", params=StatsParams, stream=True)
    async def stats(ctx: CallContext, p: StatsParams, stream: StreamSender) -> dict[str, Any]:
        """Resource usage from the cgroups: one item per interval holding a list with
        every container (CPU %, memory usage/limit, network and block I/O, pids). Without
        stream: one item, after two samples one interval apart (CPU % needs both)."""
        async for items in verbs(ctx).stats(list(p.ids), all_=p.all, stream=p.stream, interval=p.interval):
            await stream.send(items)
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
    return verbs(ctx).uploads()


async def send_data(stream: StreamSender, chunk: bytes) -> None:
    await stream.send({"data": chunk})


def register_copy(table: MethodTable) -> None:
    @table.method("container.stat_path", params=PathParams)
    async def stat_path(ctx: CallContext, p: PathParams) -> dict[str, Any]:
        """What a path in the container is (name, size, mode, mtime, is_dir, link_target);
        symlinks resolve inside the container."""
        return await verbs(ctx).stat_path(p.id, p.path, follow_link=p.follow_link)

    @table.method("container.copy_from", params=PathParams, stream=True)
    async def copy_from(ctx: CallContext, p: PathParams, stream: StreamSender) -> dict[str, Any]:
        """A tar of a path in the container (running or not), streamed as items
        ``{"data": bytes}``; its top entry is named after the path's last component.
        follow_link: a symlink named by the path is followed (inside the container)."""
        return await verbs(ctx).copy_from(p.id, p.path, functools.partial(send_data, stream),
                                          follow_link=p.follow_link)

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
        return await verbs(ctx).copy_to(p.id, p.path, p.upload, copy_uid_gid=p.copy_uid_gid)

    @table.method("container.export", params=RefParams, stream=True)
    async def export(ctx: CallContext, p: RefParams, stream: StreamSender) -> dict[str, Any]:
        """The container's filesystem (running or not) as a tar, streamed as items
        ``{"data": bytes}`` (docker export)."""
        await verbs(ctx).export(p.id, functools.partial(send_data, stream))
        return {}


@attrs.frozen
class RefParams:
    id: str


# --- diff, commit ----------------------------------------------------------------------------------


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
        return await verbs(ctx).diff(p.id)

    @table.method("container.commit", params=CommitParams)
    async def commit_(ctx: CallContext, p: CommitParams) -> dict[str, Any]:
        """A new image from the container's changes (docker commit): the container's run
        settings, then ``changes`` (CMD, ENTRYPOINT, ENV, EXPOSE, LABEL, USER, WORKDIR,
        VOLUME, STOPSIGNAL); ``pause`` pauses a running container meanwhile."""
        image = await verbs(ctx).commit(p.id, reference=p.reference, message=p.message,
                                        author=p.author, changes=list(p.changes), pause=p.pause)
        return {"Id": image.id}
