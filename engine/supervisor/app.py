"""The daemon's object graph: what RPC handlers reach through ``ctx.app``."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs

from engine.actors.events import EventBus
from engine.errors import InvalidArgument, Unavailable
from engine.plugin import Availability, Runtime, StorageDriver
from engine.pluginmanager import LoadedPlugins
from engine.store.layout import Layout
from engine.supervisor.config import DaemonConfig

AVAILABILITY_TTL = 2.0  # seconds


@attrs.define
class App:
    config: DaemonConfig
    config_path: Path | None
    layout: Layout
    plugins: LoadedPlugins
    events: EventBus = attrs.field(factory=EventBus)
    started_at: float = attrs.field(factory=time.time)
    listeners: list[str] = attrs.field(factory=list)
    # Filled in by the daemon as the subsystems come up.
    services: dict[str, Any] = attrs.field(factory=dict)
    _availability_cache: dict[str, tuple[float, Availability]] = attrs.field(factory=dict, init=False)

    def runtime(self, name: str | None = None) -> Runtime:
        name = name or self.config.default_runtime
        runtimes = self.plugins.register.runtimes
        runtime = runtimes.get(name)
        if runtime is None:
            known = ", ".join(sorted(runtimes)) or "none"
            raise InvalidArgument(f"unknown runtime {name!r}; available runtimes: {known}")
        availability = self._cached_availability(f"runtime {name}", runtime.availability)
        if not availability.ok:
            raise Unavailable(f"runtime {name!r} cannot run containers here: {availability.reason}")
        return runtime

    def _cached_availability(self, key: str, check: Callable[[], Availability]) -> Availability:
        """A plugin's own check (a PATH search, a read of mountinfo...) costs more than the
        rest of a start's bookkeeping, so a verdict is reused for a moment; a runtime or
        driver that breaks meanwhile still fails its next operation with a clear error."""
        now = time.monotonic()
        cached = self._availability_cache.get(key)
        if cached is not None and now - cached[0] < AVAILABILITY_TTL:
            return cached[1]
        availability = check()
        self._availability_cache[key] = (now, availability)
        return availability

    def storage(self) -> StorageDriver:
        name = self.config.storage_driver
        driver = self.plugins.register.storage_drivers.get(name)
        if driver is None:
            known = ", ".join(sorted(self.plugins.register.storage_drivers)) or "none"
            raise Unavailable(f"storage driver {name!r} is not installed; available: {known}")
        availability = self._cached_availability(f"storage {name}", driver.availability)
        if not availability.ok:
            raise Unavailable(f"storage driver {name!r} cannot work here: {availability.reason}")
        return driver
