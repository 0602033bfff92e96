"""Volumes in the daemon: the container side (what a create asks for becomes volumes in the
config; the actors' ``VolumeProvider``: mount at start, unmount at exit, anonymous volumes
removed with their container) and the verbs of ``volume.*``.

Which containers use a volume is asked of the supervisor each time (no second bookkeeping
to drift): every container that names it uses it (``volume rm`` refuses), the running ones
keep it mounted.
"""

from __future__ import annotations

import logging
import os
import posixpath
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import trio

from engine.actors.model import BindMount, ContainerConfig, TmpfsMount, VolumeMount
from engine.actors.state import ContainerState
from engine.errors import Conflict, InvalidArgument, NotFound, RuntimeFailure
from engine.volumes.specs import (
    VolumeRequest,
    is_bind_spec,
    parse_mount_flag,
    parse_volume_flag,
    parse_volumes_from,
)
from engine.volumes.store import VolumeRecord, VolumeStore

if TYPE_CHECKING:
    from engine.supervisor.containers import ContainerSupervisor

log = logging.getLogger("engine.volumes")

RUNNING = (ContainerState.RUNNING, ContainerState.PAUSED)
SEED_TIMEOUT = 600.0  # seconds a copy of the image's content into a new volume may take
MAX_SYMLINKS = 40


class VolumeService:
    def __init__(self, store: VolumeStore, containers: Callable[[], ContainerSupervisor]) -> None:
        self.store = store
        self._containers = containers

    # --- who uses what --------------------------------------------------------------------

    def users(self, name: str) -> list[str]:
        """Names of the containers (any state) whose config names volume ``name``."""
        return [a.name for a in self._containers().all()
                if any(v.name == name for v in a.config.volumes)]

    def running_users(self, name: str, *, excluding: str = "") -> list[str]:
        return [a.id for a in self._containers().all()
                if a.id != excluding and a.status.state in RUNNING
                and any(v.name == name for v in a.config.volumes)]

    # --- create: requests become volumes in the config ---------------------------------------

    async def attach(self, config: ContainerConfig, *, volumes: list[str], mounts: list[str],
                     volumes_from: list[str], image_volumes: list[str]) -> list[str]:
        """Fill ``config.volumes`` (and the binds and tmpfs of ``--mount`` and
        ``--volumes-from``), creating the volumes that do not exist yet. Returns the names
        of the volumes made here (to remove if the create fails after all)."""
        requests: list[VolumeRequest] = [parse_volume_flag(v) for v in volumes if not is_bind_spec(v)]
        for spec in mounts:
            parsed = parse_mount_flag(spec)
            if isinstance(parsed, BindMount):
                config.binds.append(parsed)
            elif isinstance(parsed, TmpfsMount):
                config.tmpfs.append(parsed)
            else:
                requests.append(parsed)
        inherited: list[VolumeMount] = []
        for spec in volumes_from:
            ref, read_only = parse_volumes_from(spec)
            source = self._containers().get(ref)
            for v in source.config.volumes:
                ro = v.read_only if read_only is None else read_only
                inherited.append(VolumeMount(v.name, v.destination, ro, nocopy=True))
            for b in source.config.binds:
                ro = b.read_only if read_only is None else read_only
                config.binds.append(BindMount(b.source, b.destination, ro, b.propagation))
        taken = {b.destination for b in config.binds} | {t.destination for t in config.tmpfs}
        seen: set[str] = set()
        for destination in [r.destination for r in requests] + [v.destination for v in inherited]:
            if destination in seen or destination in taken:
                raise InvalidArgument(f"duplicate mount point {destination}")
            seen.add(destination)
        # The image's VOLUMEs that nothing else covers get an anonymous volume each.
        for path in image_volumes:
            destination = posixpath.normpath(path) if path.startswith("/") else ""
            if destination and destination != "/" and destination not in seen | taken:
                requests.append(VolumeRequest("", destination))
                seen.add(destination)
        created: list[str] = []
        try:
            for request in requests:
                existed = bool(request.name) and self.store.find(request.name) is not None
                record = await self.store.create(
                    request.name, driver=request.driver or "local", options=request.options,
                    labels=request.labels, anonymous=not request.name)
                if not existed:
                    created.append(record.name)
                config.volumes.append(VolumeMount(record.name, request.destination, request.read_only,
                                                  request.nocopy, anonymous=not request.name))
        except BaseException:
            with trio.CancelScope(shield=True):
                await self.discard(created)
            raise
        config.volumes.extend(inherited)
        return created

    async def discard(self, names: list[str]) -> None:
        """Remove volumes made for a create that failed."""
        for name in names:
            try:
                await self.store.remove(name, users=[])
            except (NotFound, Conflict) as e:
                log.warning("volume %s made for a failed create stays: %s", name, e)

    # --- the actors' VolumeProvider ----------------------------------------------------------

    async def mount(self, config: ContainerConfig, rootfs: Path, *, holder: str = "") -> list[dict[str, Any]]:
        """Mount every volume of the container (seeding new empty ones from the image);
        the host paths, for the bundle. ``holder``: counted under that name instead of the
        container's run (a ``cp`` of the stopped container)."""
        result = []
        try:
            for v in config.volumes:
                async def prepare(path: Path, v: VolumeMount = v) -> None:
                    if not v.nocopy:
                        await seed(rootfs, v.destination, path)

                path = await self.store.mount(v.name, config.id, prepare, holder=holder)
                result.append({"source": str(path), "destination": v.destination,
                               "read_only": v.read_only, "name": v.name,
                               "driver": self.store.get(v.name).driver})
        except BaseException:
            with trio.CancelScope(shield=True):
                await self.unmount(config, holder=holder)
            raise
        return result

    async def unmount(self, config: ContainerConfig, *, holder: str = "") -> None:
        for v in config.volumes:
            # a copy's holder: the container's own run (if it started meanwhile) counts too
            still_used = bool(self.running_users(v.name, excluding="" if holder else config.id))
            await self.store.unmount(v.name, config.id, still_used=still_used, holder=holder)

    async def remove_anonymous(self, config: ContainerConfig) -> None:
        """``rm -v`` / ``--rm``: the anonymous volumes made for this container go, unless
        another container uses them too (``--volumes-from``)."""
        for v in config.volumes:
            if not v.anonymous:
                continue
            users = [n for n in self.users(v.name) if n != config.name]
            if users:
                continue
            try:
                await self.store.remove(v.name, users=[])
            except NotFound:
                pass

    # --- prune -----------------------------------------------------------------------------

    async def prune(self, *, all_volumes: bool, match: Callable[[VolumeRecord], bool]) -> tuple[list[str], int]:
        """Remove unused volumes: anonymous ones only unless ``all_volumes`` (docker 23+).
        Returns the names and the bytes freed."""
        removed, freed = [], 0
        for record in self.store.list():
            if not (all_volumes or record.anonymous) or not match(record):
                continue
            if self.users(record.name) or self.store.holders(record.name):
                continue
            size = await self.store.usage(record)
            try:
                await self.store.remove(record.name, users=self.users(record.name))
            except (Conflict, NotFound):
                continue
            removed.append(record.name)
            freed += max(size, 0)
        return removed, freed


# --- seeding a new volume from the image ------------------------------------------------------


def resolve_in_root(root: Path, path: str) -> Path | None:
    """``path`` inside the container's root filesystem, symlinks followed as the container
    would see them (never out of ``root``); None if it does not exist."""
    parts = list(PurePosixPath(path).parts[1:])
    current = root
    hops = 0
    while parts:
        part = parts.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            if current != root:
                current = current.parent
            continue
        candidate = current / part
        try:
            st = os.lstat(candidate)
        except FileNotFoundError:
            return None
        if stat.S_ISLNK(st.st_mode):
            hops += 1
            if hops > MAX_SYMLINKS:
                return None
            target = os.readlink(candidate)
            if target.startswith("/"):
                current = root
            parts = list(PurePosixPath(target).parts[1 if target.startswith("/") else 0:]) + parts
            continue
        current = candidate
    return current


def _needs_seed(rootfs: Path, destination: str, volume: Path) -> Path | None:
    """The image's directory to copy, when the volume is empty and the image has content
    there."""
    try:
        if any(os.scandir(volume)):
            return None
    except OSError:
        return None
    source = resolve_in_root(rootfs, destination)
    if source is None or not source.is_dir() or source.is_symlink():
        return None
    with os.scandir(source) as entries:
        has_content = any(True for _ in entries)
    # the directory's own owner and mode are docker's too, even when it is empty
    st = os.stat(source)
    os.chown(volume, st.st_uid, st.st_gid)
    os.chmod(volume, stat.S_IMODE(st.st_mode))
    return source if has_content else None


async def seed(rootfs: Path, destination: str, volume: Path) -> None:
    """docker's copy-up: a new, empty volume over a path with content in the image gets
    that content, owners, modes, links and times kept."""
    try:
        source = await trio.to_thread.run_sync(_needs_seed, rootfs, destination, volume)
    except OSError as e:
        raise RuntimeFailure(f"cannot seed volume {volume.parent.name} from the image's "
                             f"{destination}: {e.strerror or e}") from None
    if source is None:
        return
    argv = ["cp", "-a", "--no-dereference", f"{source}/.", f"{volume}/"]
    with trio.move_on_after(SEED_TIMEOUT):
        result = await trio.run_process(argv, capture_stderr=True, check=False, stdin=subprocess.DEVNULL)
        if result.returncode != 0:
            text = result.stderr.decode(errors="replace").strip()
            raise RuntimeFailure(f"seeding volume {volume.parent.name} from the image's "
                                 f"{destination} failed: {text}")
        return
    raise RuntimeFailure(f"seeding volume {volume.parent.name} from {destination} took longer "
                         f"than {SEED_TIMEOUT:g}s")
