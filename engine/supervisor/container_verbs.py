"""The everyday verbs as a service: update, top, stats, cp (stat, copy out, copy in),
export, diff, commit. The RPC's ``container.*`` handlers (engine.api.container_verbs) and
the Docker API (engine.dockerapi) both call these, so the two front doors behave alike.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import trio

from engine.actors import commands as c
from engine.actors.container import ContainerActor
from engine.actors.state import ContainerState
from engine.actors.verbs import check_cpus
from engine.errgroup import unwrap_single_error
from engine.errors import InvalidArgument
from engine.images.records import Image
from engine.supervisor import commit
from engine.supervisor import copy as cp
from engine.supervisor import stats as st
from engine.supervisor.app import App
from engine.supervisor.container_service import ContainerService
from engine.supervisor.host_options import require_swap_accounting

MIN_STATS_INTERVAL = 0.1
DIFF_KINDS = {"C": 0, "A": 1, "D": 2}  # docker's Kind numbers
# files the runtime creates as targets of the engine's bind mounts: not the container's
MOUNT_POINTS = frozenset({"/etc/hostname", "/etc/hosts", "/etc/resolv.conf"})

Emit = Callable[[bytes], Awaitable[None]]


def stats_target(actor: ContainerActor) -> st.Target:
    running = actor.status.state in (ContainerState.RUNNING, ContainerState.PAUSED)
    return st.Target(actor.id, actor.name, actor.status.pid if running else 0)


@contextlib.asynccontextmanager
async def open_root(actor: ContainerActor, *, with_mounts: bool = True) -> AsyncIterator[int]:
    """An fd of the container's root (mounted for as long as it is held); ``with_mounts``:
    see ``OpenRootfs``."""
    fd: int = await actor.call(c.OpenRootfs(with_mounts))
    try:
        yield fd
    finally:
        os.close(fd)
        actor.notify(c.ReleaseRootfs())


async def stream_from_thread(work: Callable[[Callable[[bytes], None]], Any], emit: Emit) -> Any:
    """Run ``work(emit)`` in a worker thread; each chunk it emits goes to ``emit`` on the
    loop, with the consumer's backpressure reaching the thread. Cancelling (the client
    went away) makes the thread's next ``emit`` fail, so it ends."""
    sender, receiver = trio.open_memory_channel[bytes](4)
    result: list[Any] = []

    def from_thread(chunk: bytes) -> None:
        trio.from_thread.run(sender.send, chunk)

    async def produce() -> None:
        async with sender:
            result.append(await trio.to_thread.run_sync(work, from_thread))

    with unwrap_single_error():  # the thread's NotFound is the caller's, not a group's
        async with trio.open_nursery() as nursery:
            nursery.start_soon(produce)
            async with receiver:
                async for chunk in receiver:
                    await emit(chunk)
    return result[0] if result else None


class ContainerVerbs:
    def __init__(self, app: App) -> None:
        self.app = app
        self.containers = ContainerService(app)

    def get(self, ref: str) -> ContainerActor:
        return self.containers.get(ref)

    async def update(self, ref: str, *, memory: int | None = None, cpus: float | None = None,
                     pids_limit: int | None = None, restart: str | None = None,
                     cpu_shares: int | None = None, cpuset_cpus: str | None = None,
                     cpuset_mems: str | None = None, memory_swap: int | None = None) -> dict[str, Any]:
        """New limits (applied to a running container's cgroup at once) and restart policy;
        kept for later starts."""
        if memory_swap is not None:
            require_swap_accounting()
        if cpus is not None:
            check_cpus(cpus)
        return await self.get(ref).call(c.Update(  # type: ignore[no-any-return]
            memory, cpus, pids_limit, restart, cpu_shares, cpuset_cpus, cpuset_mems, memory_swap))

    async def top(self, ref: str, ps_args: list[str]) -> dict[str, Any]:
        return await st.top(stats_target(self.get(ref)).pid, list(ps_args))

    def stats_targets(self, ids: list[str], all_: bool) -> list[st.Target]:
        if ids:
            return [stats_target(self.get(ref)) for ref in ids]
        return [stats_target(a) for a in self.containers.supervisor.all()
                if all_ or a.status.state in (ContainerState.RUNNING, ContainerState.PAUSED)]

    async def stats(self, ids: list[str], *, all_: bool = False, stream: bool = True,
                    interval: float = 1.0) -> AsyncIterator[list[dict[str, Any]]]:
        """Every ``interval``, a list with each container's numbers (engine.supervisor.stats);
        the first after two samples (CPU % needs both). Without stream: that one only."""
        if not MIN_STATS_INTERVAL <= interval <= 3600:
            raise InvalidArgument(f"stats interval must be {MIN_STATS_INTERVAL} to 3600 seconds")
        sampler = st.Sampler()
        await sampler.tick(self.stats_targets(ids, all_))
        while True:
            await trio.sleep(interval)
            yield await sampler.tick(self.stats_targets(ids, all_))
            if not stream:
                return

    # --- cp, export --------------------------------------------------------------------------

    async def stat_path(self, ref: str, path: str, *, follow_link: bool = False) -> dict[str, Any]:
        async with open_root(self.get(ref)) as root:
            return await trio.to_thread.run_sync(  # type: ignore[no-any-return]
                functools.partial(cp.describe_path, root, path, follow=follow_link))

    async def copy_from(self, ref: str, path: str, emit: Emit, *, follow_link: bool = False,
                        described: Callable[[dict[str, Any]], Awaitable[None]] | None = None) -> dict[str, Any]:
        """A tar of ``path`` to ``emit``; ``described`` hears what the path is first."""
        async with open_root(self.get(ref)) as root:
            info = await trio.to_thread.run_sync(
                functools.partial(cp.describe_path, root, path, follow=follow_link))
            if described is not None:
                await described(info)
            await stream_from_thread(lambda out: cp.archive_path(root, path, out, follow=follow_link), emit)
        return {"stat": info}

    def uploads(self) -> cp.Uploads:
        return cp.Uploads(self.app.layout.root / "uploads")

    async def copy_to(self, ref: str, path: str, upload: str, *, copy_uid_gid: bool = False,
                      into_dir_only: bool = False) -> dict[str, Any]:
        """Extract an uploaded tar (``uploads()``) at ``path``; the upload is consumed.
        ``into_dir_only``: ``path`` must be a directory (the Docker API's)."""
        store = self.uploads()
        archive_path = await trio.to_thread.run_sync(store.path, upload)
        try:
            actor = self.get(ref)
            check = cp.WriteCheck.of(actor.config)
            async with open_root(actor) as root:

                def extract() -> cp.CopyInResult:
                    with open(archive_path, "rb") as archive:
                        return cp.extract_into(root, path, archive, copy_uid_gid=copy_uid_gid, check=check,
                                               into_dir_only=into_dir_only)

                done = await trio.to_thread.run_sync(extract)
        finally:
            await trio.to_thread.run_sync(lambda: archive_path.unlink(missing_ok=True))
        return {"entries": done.entries, "bytes": done.bytes}

    async def export(self, ref: str, emit: Emit) -> None:
        async with open_root(self.get(ref), with_mounts=False) as root:
            await stream_from_thread(lambda out: cp.export_root(root, out), emit)

    # --- diff, commit --------------------------------------------------------------------------

    async def diff(self, ref: str) -> list[dict[str, Any]]:
        """[{Path, Kind}] with Kind 0 changed, 1 added, 2 deleted (docker's numbers)."""
        actor = self.get(ref)
        found = await self.app.storage().changes(actor.id)
        kept = [(kind, path) for kind, path in found if not (kind == "A" and path in MOUNT_POINTS)]
        # a directory changed only by the runtime creating those mount points (/etc) is not
        # the container's change either: docker keeps them in a layer of its own
        hidden = {os.path.dirname(path) for kind, path in found if (kind, path) not in kept}
        below = {os.path.dirname(path) for _kind, path in kept}
        return [{"Path": path, "Kind": DIFF_KINDS[kind]} for kind, path in kept
                if not (kind == "C" and path in hidden and path not in below)]

    async def commit(self, ref: str, *, reference: str = "", message: str = "", author: str = "",
                     changes: list[str] | None = None, pause: bool = True) -> Image:
        actor = self.get(ref)
        image = await commit.commit(self.app, actor, reference=reference, message=message,
                                    author=author, changes=list(changes or []), pause=pause)
        self.app.events.emit("container", "commit", actor.id, name=actor.name, image=image.id)
        return image
