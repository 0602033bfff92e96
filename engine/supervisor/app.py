"""The daemon's object graph: the configuration, the plugins and the typed ``Services``
that RPC handlers reach through ``ctx.app``.

The daemon builds it once at start-up (``engine.supervisor.daemon``); nothing is looked up
by a string key.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import trio

from engine.actors.events import EventBus
from engine.errors import InvalidArgument, Unavailable
from engine.plugin import Availability, Runtime, StorageDriver
from engine.pluginmanager import LoadedPlugins
from engine.store.layout import Layout
from engine.supervisor.config import DaemonConfig

if TYPE_CHECKING:
    from engine.images.store import ImageStore
    from engine.network.service import ContainerNetworking
    from engine.rpc.server import RPCServer
    from engine.supervisor.containers import ContainerSupervisor
    from engine.supervisor.volumes import VolumeService

AVAILABILITY_TTL = 2.0  # seconds


class PluginAvailability:
    """Plugins' verdicts on whether they can work here, kept fresh off the event loop.

    A plugin's own check (a PATH search, a read of mountinfo...) blocks, and costs more than
    the rest of a start's bookkeeping: lookups use the last verdict, and one older than
    ``AVAILABILITY_TTL`` is renewed in a worker thread in the background. A runtime or
    driver that breaks meanwhile still fails its next operation with a clear error."""

    def __init__(self) -> None:
        self._verdicts: dict[str, tuple[float, Availability]] = {}
        self._refreshing: set[str] = set()
        self._nursery: trio.Nursery | None = None

    def start(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery

    async def check_now(self, key: str, check: Callable[[], Availability]) -> Availability:
        verdict = await trio.to_thread.run_sync(check)
        self._verdicts[key] = (time.monotonic(), verdict)
        return verdict

    def verdict(self, key: str, check: Callable[[], Availability]) -> Availability:
        now = time.monotonic()
        cached = self._verdicts.get(key)
        if cached is None:
            # Never checked (a plugin that appeared after start-up): once, here.
            verdict = check()
            self._verdicts[key] = (now, verdict)
            return verdict
        if now - cached[0] >= AVAILABILITY_TTL and key not in self._refreshing and self._nursery is not None:
            self._refreshing.add(key)
            self._nursery.start_soon(self._refresh, key, check)
        return cached[1]

    async def _refresh(self, key: str, check: Callable[[], Availability]) -> None:
        try:
            await self.check_now(key, check)
        finally:
            self._refreshing.discard(key)


@attrs.define
class Services:
    """The daemon's subsystems, filled in once as they come up at start-up."""

    containers: ContainerSupervisor | None = None
    images: ImageStore | None = None
    images_error: str = ""  # why images are unavailable, when they are
    network: ContainerNetworking | None = None
    rpc: RPCServer | None = None
    volumes: VolumeService | None = None
    flags: dict[str, Any] = attrs.field(factory=dict)  # kept for SIGHUP: file + same flags
    reload_hooks: list[Callable[[App], None]] = attrs.field(factory=list)

    def require_containers(self) -> ContainerSupervisor:
        if self.containers is None:
            raise Unavailable("containers are not available yet (the daemon is starting); retry")
        return self.containers

    def require_images(self) -> ImageStore:
        if self.images is None:
            raise Unavailable(f"the image store is unavailable: {self.images_error or 'the daemon is starting'}")
        return self.images


@attrs.define
class App:
    config: DaemonConfig
    config_path: Path | None
    layout: Layout
    plugins: LoadedPlugins
    events: EventBus = attrs.field(factory=EventBus)
    started_at: float = attrs.field(factory=time.time)
    listeners: list[str] = attrs.field(factory=list)
    services: Services = attrs.field(factory=Services)
    availability: PluginAvailability = attrs.field(factory=PluginAvailability)

    # --- runtimes (the actors' RuntimeProvider) --------------------------------------------

    def usable(self, name: str) -> Runtime:
        return self.runtime(name)

    def installed(self, name: str) -> Runtime | None:
        return self.plugins.register.runtimes.get(name)

    def runtime(self, name: str | None = None) -> Runtime:
        name = name or self.config.default_runtime
        runtimes = self.plugins.register.runtimes
        runtime = runtimes.get(name)
        if runtime is None:
            known = ", ".join(sorted(runtimes)) or "none"
            raise InvalidArgument(f"unknown runtime {name!r}; available runtimes: {known}")
        availability = self.availability.verdict(f"runtime {name}", runtime.availability)
        if not availability.ok:
            raise Unavailable(f"runtime {name!r} cannot run containers here: {availability.reason}")
        return runtime

    def storage(self) -> StorageDriver:
        name = self.config.storage_driver
        driver = self.plugins.register.storage_drivers.get(name)
        if driver is None:
            known = ", ".join(sorted(self.plugins.register.storage_drivers)) or "none"
            raise Unavailable(f"storage driver {name!r} is not installed; available: {known}")
        availability = self.availability.verdict(f"storage {name}", driver.availability)
        if not availability.ok:
            raise Unavailable(f"storage driver {name!r} cannot work here: {availability.reason}")
        return driver

    def installed_storage(self) -> StorageDriver | None:
        return self.plugins.register.storage_drivers.get(self.config.storage_driver)

    async def check_plugins(self) -> None:
        """Every runtime's and storage driver's verdict, once, off the loop (start-up)."""
        for name, runtime in self.plugins.register.runtimes.items():
            await self.availability.check_now(f"runtime {name}", runtime.availability)
        for name, driver in self.plugins.register.storage_drivers.items():
            await self.availability.check_now(f"storage {name}", driver.availability)


class RootfsAccess:
    """The actors' ``RootfsProvider`` over the configured storage driver."""

    def __init__(self, app: App) -> None:
        self.app = app

    async def mount(self, container_id: str, layers: list[str]) -> Path:
        return await self.app.storage().mount(container_id, layers, read_only=False)

    async def unmount(self, container_id: str) -> None:
        driver = self.app.installed_storage()
        if driver is not None:
            await driver.unmount(container_id)

    async def remove(self, container_id: str) -> None:
        driver = self.app.installed_storage()
        if driver is not None:
            await driver.remove_container(container_id)
