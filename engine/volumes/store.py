"""Volumes: their records under ``<root>/volumes/<name>/volume.json``, their drivers (plugins,
``engine.plugin.VolumeDriver``) and who has them mounted.

The record is written (atomically) before the driver makes anything, and removed after the
driver removed the data: a crash in between leaves a record whose data is missing (``system
check`` reports it) rather than data nobody knows of. Mounts are counted in memory: a
volume is mounted by its driver when the first running container needs it and unmounted
when none does; after a daemon restart the running containers are asked again
(``in_use_by``), so no count is kept on disk.
"""

from __future__ import annotations

import builtins
import json
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import attrs
import trio

from engine.convert import disk
from engine.errors import AlreadyExists, Conflict, InvalidArgument, NotFound, Unavailable
from engine.plugin import VolumeDriver
from engine.store.atomic import write_bytes_atomic
from engine.store.rmtree import remove_tree

log = logging.getLogger("engine.volumes")

RECORD = "volume.json"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
MAX_NAME = 255


@attrs.define
class VolumeRecord:
    name: str
    driver: str
    created: float
    options: dict[str, str] = attrs.field(factory=dict)
    labels: dict[str, str] = attrs.field(factory=dict)
    anonymous: bool = False


def check_name(name: str) -> str:
    if not NAME_RE.match(name) or len(name) > MAX_NAME:
        raise InvalidArgument(f"invalid volume name {name!r}: use letters, digits and _ . - "
                              "(starting with a letter or digit), at most 255 characters")
    return name


def new_anonymous_name() -> str:
    return secrets.token_hex(32)


class VolumeStore:
    """Every volume of the daemon. ``drivers``: the registered volume drivers by name;
    ``publish(action, record, **attributes)`` emits a volume event."""

    def __init__(self, volumes_dir: Path, drivers: Callable[[], dict[str, VolumeDriver]],
                 publish: Callable[..., None]) -> None:
        self.dir = volumes_dir
        self._drivers = drivers
        self._publish = publish
        self._records: dict[str, VolumeRecord] = {}
        self._locks: dict[str, trio.Lock] = {}
        # volume name -> ids of the containers that mounted it through this daemon
        self._holders: dict[str, set[str]] = {}
        # volumes this daemon unmounted and has not mounted since (others: maybe mounted,
        # e.g. by the daemon before a restart)
        self._unmounted: set[str] = set()
        self.broken: dict[str, str] = {}  # name -> why its record is unreadable

    # --- records --------------------------------------------------------------------------

    def load(self) -> None:
        """Read every record (blocking: at start-up, in a thread)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        for entry in sorted(self.dir.iterdir()):
            if not entry.is_dir() or entry.name.startswith("."):
                continue
            try:
                record = disk.structure(json.loads((entry / RECORD).read_bytes()), VolumeRecord)
            except (OSError, ValueError, TypeError) as e:
                self.broken[entry.name] = f"unreadable {RECORD}: {e}"
                continue
            except Exception as e:  # cattrs' validation errors
                self.broken[entry.name] = f"invalid {RECORD}: {e}"
                continue
            if record.name != entry.name:
                self.broken[entry.name] = f"{RECORD} names {record.name!r}"
                continue
            self._records[record.name] = record

    def rescan(self) -> None:
        """Look at the records on disk again (blocking): ``broken`` then names every
        volume directory whose record cannot be read now (``system check``)."""
        for entry in sorted(self.dir.iterdir()) if self.dir.exists() else []:
            if not entry.is_dir() or entry.name.startswith("."):
                continue
            try:
                record = disk.structure(json.loads((entry / RECORD).read_bytes()), VolumeRecord)
            except Exception as e:  # unreadable, not JSON, or not a record
                self.broken[entry.name] = f"unreadable {RECORD}: {e}"
                self._records.pop(entry.name, None)
                continue
            if record.name != entry.name:
                self.broken[entry.name] = f"{RECORD} names {record.name!r}"
                self._records.pop(entry.name, None)

    def _write(self, record: VolumeRecord) -> None:
        directory = self.dir / record.name
        directory.mkdir(mode=0o711, exist_ok=True)
        write_bytes_atomic(directory / RECORD, json.dumps(disk.unstructure(record)).encode(), mode=0o600)

    def get(self, name: str) -> VolumeRecord:
        record = self._records.get(name)
        if record is None:
            raise NotFound(f"no such volume: {name}")
        return record

    def find(self, name: str) -> VolumeRecord | None:
        return self._records.get(name)

    def list(self) -> builtins.list[VolumeRecord]:
        return sorted(self._records.values(), key=lambda r: r.name)

    def driver(self, name: str) -> VolumeDriver:
        drivers = self._drivers()
        driver = drivers.get(name)
        if driver is None:
            known = ", ".join(sorted(drivers)) or "none"
            raise NotFound(f"volume driver {name!r} is not installed; installed: {known}")
        availability = driver.availability()
        if not availability.ok:
            raise Unavailable(f"volume driver {name!r} cannot work here: {availability.reason}")
        return driver

    def path(self, name: str) -> Path:
        return self.dir / name

    def _lock(self, name: str) -> trio.Lock:
        return self._locks.setdefault(name, trio.Lock())

    async def create(self, name: str = "", *, driver: str = "local", options: dict[str, str] | None = None,
                     labels: dict[str, str] | None = None, anonymous: bool = False) -> VolumeRecord:
        """A new volume; an existing one of the same name and driver is returned as it is
        (docker's `volume create` is idempotent), of another driver is a conflict."""
        name = check_name(name) if name else new_anonymous_name()
        driver = driver or "local"
        options = dict(options or {})
        async with self._lock(name):
            existing = self._records.get(name)
            if existing is not None:
                if existing.driver != driver:
                    raise AlreadyExists(f"volume {name} exists with driver {existing.driver}, not {driver}")
                return existing
            plugin = self.driver(driver)
            record = VolumeRecord(name=name, driver=driver, created=time.time(), options=options,
                                  labels=dict(labels or {}), anonymous=anonymous)
            await trio.to_thread.run_sync(self._write, record)
            try:
                await plugin.create(name, options)
            except BaseException:
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(remove_tree, self.path(name))
                raise
            self._records[name] = record
        self._publish("create", record)
        return record

    async def remove(self, name: str, *, users: builtins.list[str]) -> None:
        """Delete a volume no container uses (``users``: the containers that do)."""
        record = self.get(name)
        if users:
            raise Conflict(f"volume {name} is in use by container(s) {', '.join(sorted(users))}; "
                           "remove them first", users=sorted(users))
        async with self._lock(name):
            if self._holders.get(name):
                raise Conflict(f"volume {name} is mounted by a starting container; retry")
            driver = self.driver(record.driver)
            await driver.remove(name, record.options)
            self._records.pop(name, None)
            await trio.to_thread.run_sync(remove_tree, self.path(name))
        self._locks.pop(name, None)
        self._publish("destroy", record)

    async def forget_broken(self, name: str) -> None:
        """``system check --repair``: a volume whose record is unreadable goes, data and all
        (unmounted first if a local one is)."""
        self.broken.pop(name, None)
        path = self.path(name)
        data = path / "_data"
        if await trio.to_thread.run_sync(_is_mountpoint, data):
            await trio.run_process(["umount", str(data)], check=False)
        await trio.to_thread.run_sync(remove_tree, path)

    # --- mounts ---------------------------------------------------------------------------

    async def mount(self, name: str, container_id: str,
                    prepare: Callable[[Path], Awaitable[None]] | None = None, *, holder: str = "") -> Path:
        """Mount for ``container_id``; ``prepare(path)`` runs once mounted, under the
        volume's lock (two containers starting on a new volume seed it once). ``holder``:
        the name the use is counted under when not the container's run (a ``cp``)."""
        record = self.get(name)
        holder = holder or container_id
        async with self._lock(name):
            path = await self.driver(record.driver).mount(name, record.options)
            if prepare is not None:
                await prepare(path)
            self._unmounted.discard(name)
            holders = self._holders.setdefault(name, set())
            new = holder not in holders
            holders.add(holder)
        if new:  # docker's: one mount event per container
            self._publish("mount", record, container=container_id)
        return path

    async def unmount(self, name: str, container_id: str, *, still_used: bool, holder: str = "") -> None:
        """``container_id`` (counted as ``holder``, see ``mount``) no longer needs the
        volume; ``still_used``: a running container this daemon adopted (not in the
        in-memory count) still does."""
        record = self._records.get(name)
        if record is None:
            return
        holder = holder or container_id
        async with self._lock(name):
            holders = self._holders.get(name, set())
            held = holder in holders
            holders.discard(holder)
            if not (holders or still_used or name in self._unmounted):
                self._holders.pop(name, None)
                await self.driver(record.driver).unmount(name, record.options)
                self._unmounted.add(name)
                held = True  # (after a daemon restart the count started empty)
        if held:
            self._publish("unmount", record, container=container_id)

    def holders(self, name: str) -> set[str]:
        return set(self._holders.get(name, ()))

    async def usage(self, record: VolumeRecord) -> int:
        try:
            return await self.driver(record.driver).usage(record.name, record.options)
        except (NotFound, Unavailable):
            return -1


def _is_mountpoint(path: Path) -> bool:
    where = str(path)
    try:
        with open("/proc/self/mountinfo") as f:
            return any(line.split(" ")[4] == where for line in f)
    except OSError:
        return False


def record_view(record: VolumeRecord, mountpoint: Path, *, usage: int | None = None,
                ref_count: int | None = None) -> dict[str, Any]:
    """docker's volume inspect shape."""
    view: dict[str, Any] = {
        "Name": record.name,
        "Driver": record.driver,
        "Mountpoint": str(mountpoint),
        "CreatedAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.created)),
        "Labels": record.labels,
        "Options": record.options,
        "Scope": "local",
        "Anonymous": record.anonymous,
    }
    if usage is not None or ref_count is not None:
        view["UsageData"] = {"Size": -1 if usage is None else usage,
                             "RefCount": -1 if ref_count is None else ref_count}
    return view
