"""system.* methods: ping, version, info, events; rpc.describe."""

from __future__ import annotations

import os
import platform
import time
from typing import Any

import attrs

import engine
from engine.actors.events import Event
from engine.errors import InvalidArgument
from engine.rpc.methods import MethodTable
from engine.rpc.protocol import MAX_FRAME, MAX_INPUT_ITEM, STREAM_WINDOW
from engine.rpc.server import CallContext, StreamSender

API_VERSION = "1.0"


@attrs.frozen
class SystemPruneParams:
    all: bool = False  # unused images too, not only dangling ones
    volumes: bool = False  # unused anonymous volumes too
    filters: dict[str, list[str]] = attrs.field(factory=dict)  # until, label, label!


@attrs.frozen
class CheckParams:
    repair: bool = False


@attrs.frozen
class EventsParams:
    since: float | None = None
    until: float | None = None
    filters: dict[str, list[str]] = attrs.field(factory=dict)


def event_filter(filters: dict[str, list[str]]) -> Any:
    """docker's --filter keys: type, event (action), container / image / id, label."""
    allowed = {"type", "event", "action", "container", "image", "network", "id", "label"}
    unknown = set(filters) - allowed
    if unknown:
        raise InvalidArgument(
            f"unknown event filter {', '.join(sorted(unknown))}; use one of {', '.join(sorted(allowed))}"
        )

    def matches(event: Event) -> bool:
        for key, values in filters.items():
            if key == "type" and event.type not in values:
                return False
            # docker: "health_status" matches "health_status: healthy" and the like
            if key in ("event", "action") and event.action not in values \
                    and event.action.partition(":")[0] not in values:
                return False
            if key in ("container", "image", "network", "id"):
                if key != "id" and event.type != key:
                    return False
                name = str(event.attributes.get("name", ""))
                if not any(v in (event.id, name) or event.id.startswith(v) for v in values):
                    return False
            if key == "label":
                labels = event.attributes  # docker keeps labels flat among the attributes
                for v in values:
                    k, _, want = v.partition("=")
                    if k not in labels or (want and labels[k] != want):
                        return False
        return True

    return matches


def register(table: MethodTable) -> None:
    @table.method("system.ping")
    async def ping(ctx: CallContext, params: dict[str, Any]) -> str:
        """Answers "pong": the daemon is up and serving."""
        return "pong"

    @table.method("system.version")
    async def version(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
        """Versions of the engine, its API and the host."""
        return {
            "Version": engine.__version__,
            "ApiVersion": API_VERSION,
            "Os": platform.system().lower(),
            "Arch": platform.machine(),
            "KernelVersion": platform.release(),
            "PythonVersion": platform.python_version(),
            "Pid": os.getpid(),
        }

    @table.method("system.info")
    async def info(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
        """Plugins with their availability, paths, and object counts."""
        app = ctx.app
        reg = app.plugins.register

        def describe(kind: str, name: str, obj: Any) -> dict[str, Any]:
            # runtimes and storage drivers say whether they can work here (the verdict is
            # kept fresh off the event loop); a registry client always can
            avail = (app.availability.verdict(f"{kind} {name}", obj.availability)
                     if kind in ("runtime", "storage", "volume") else None)
            return {
                "name": name,
                "plugin": reg.owners.get(f"{kind}:{name}", ""),
                "available": bool(avail.ok) if avail else True,
                "reason": avail.reason if avail else "",
            }

        counts: dict[str, int] = {}
        if app.services.containers is not None:
            counts.update(app.services.containers.counts())
        if app.services.images is not None:
            counts["images"] = len(app.services.images.list())
        if app.services.volumes is not None:
            counts["volumes"] = len(app.services.volumes.store.list())
        return {
            "Version": engine.__version__,
            "Root": str(app.layout.root),
            "RunRoot": str(app.layout.run_root),
            "ConfigFile": str(app.config_path) if app.config_path else None,
            "Hosts": list(app.listeners),
            "DefaultRuntime": app.config.default_runtime,
            "StorageDriver": app.config.storage_driver,
            "Runtimes": [describe("runtime", n, r) for n, r in sorted(reg.runtimes.items())],
            "StorageDrivers": [describe("storage", n, d) for n, d in sorted(reg.storage_drivers.items())],
            "VolumeDrivers": [describe("volume", n, d) for n, d in sorted(reg.volume_drivers.items())],
            "RegistryClients": [
                describe("registry", c.name, c) for c in reg.registry_clients
            ],
            "Plugins": {
                "loaded": dict(sorted(app.plugins.loaded.items())),
                "failed": dict(sorted(app.plugins.failed.items())),
                "disabled": list(app.plugins.disabled),
            },
            "Counts": counts,
            "Containers": counts.get("containers", 0),
            "ContainersRunning": counts.get("running", 0),
            "Images": counts.get("images", 0),
            "UptimeSeconds": round(time.time() - app.started_at, 3),
            "EventSubscribers": app.events.subscriber_count,
            "Connections": app.services.rpc.connections if app.services.rpc is not None else 0,
            "Kernel": platform.release(),
            "NCPU": os.cpu_count(),
        }

    @table.method("system.events", params=EventsParams, stream=True)
    async def events(ctx: CallContext, params: EventsParams, stream: StreamSender) -> dict[str, Any]:
        """Stream events (docker's `events`): past ones from `since`, then live ones until
        `until` or until the client cancels."""
        import trio

        sub = ctx.app.events.subscribe(event_filter(params.filters), since=params.since)
        try:
            # Past events first (already queued by subscribe), then live ones until `until`.
            while True:
                try:
                    event = sub.receive.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
                if event is None or (params.until is not None and event.time > params.until):
                    break
                sub.taken(event)
                await stream.send(event.to_wire())
            with trio.CancelScope() as scope:
                if params.until is not None:
                    scope.deadline = trio.current_time() + max(0.0, params.until - time.time())
                async for live in sub.receive:
                    if live is None or (params.until is not None and live.time > params.until):
                        break
                    sub.taken(live)
                    await stream.send(live.to_wire())
        finally:
            ctx.app.events.unsubscribe(sub)
        return {"sent": stream.sent, "lagged": sub.lagged}

    @table.method("system.df")
    async def df(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
        """Disk usage of images (shared and unique), containers and volumes, as du counts
        it, and what a prune could reclaim (docker's system df -v)."""
        from engine.supervisor.system import disk_usage_report

        return await disk_usage_report(ctx.app)

    @table.method("system.prune", params=SystemPruneParams)
    async def prune(ctx: CallContext, p: SystemPruneParams) -> dict[str, Any]:
        """Remove stopped containers, unused networks, dangling images (all unused ones
        with all) and, with volumes, unused anonymous volumes; filters until and label."""
        from engine.supervisor.system import system_prune

        return await system_prune(ctx.app, all_images=p.all, volumes=p.volumes, filters=dict(p.filters))

    @table.method("system.check", params=CheckParams)
    async def check(ctx: CallContext, p: CheckParams) -> dict[str, Any]:
        """Verify blobs, image records, layers, container roots and volume records; with
        repair, mend what is broken and leave the rest alone."""
        from engine.supervisor.check import system_check

        return await system_check(ctx.app, repair=p.repair)

    @table.method("rpc.describe")
    async def describe(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
        """The method table (``input``: the method reads ``$stream.in`` items), the streaming
        window (both directions), the frame limit, the largest input item and the error codes."""
        from engine.errors import all_error_classes

        return {
            "methods": ctx.app.services.rpc.methods.describe() if ctx.app.services.rpc else {},
            "stream_window": STREAM_WINDOW,
            "max_frame": MAX_FRAME,
            "max_input_item": MAX_INPUT_ITEM,
            "error_codes": sorted({c.code for c in all_error_classes()}),
        }
