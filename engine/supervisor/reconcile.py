"""Start-up reconciliation: the one step that repairs what the last daemon left, before the
RPC listens.

In order:
1. the image store's writeback marker (a power loss since the last pull: re-hash blobs,
   drop layers written since);
2. the storage driver's debris (interrupted unpacks and removals);
3. containers on disk: half-created ones are discarded; networking held by containers that
   are not running any more is released (CNI DEL, namespaces, IPAM leases);
4. every other container gets its actor, which adopts it (live-restore: running ones are
   watched again, those that ended meanwhile get their real exit code and their restart
   policy, removals in progress are finished);
5. root filesystems still mounted for containers that are not running are unmounted.

No failure here keeps the daemon down: each step logs what it could not repair, and the
next start tries again.
"""

from __future__ import annotations

import logging
from pathlib import Path

import trio

from engine.actors.model import ContainerConfig, ContainerFiles, ContainerStatus, remove_dir
from engine.actors.state import ContainerState
from engine.errors import EngineError
from engine.plugin import StaleReport
from engine.supervisor.app import App
from engine.supervisor.containers import ContainerSupervisor

log = logging.getLogger("engine.reconcile")

_KEEP_NETWORK = (ContainerState.RUNNING, ContainerState.PAUSED)


async def reconcile_at_start(app: App, supervisor: ContainerSupervisor) -> None:
    if app.services.images is not None:
        try:
            await app.services.images.reconcile()
        except EngineError as e:
            log.error("image store reconcile failed: %s", e)
    stale = await _storage_debris(app)
    loaded = await trio.to_thread.run_sync(load_containers, app.layout.containers_dir)
    live: list[tuple[ContainerConfig, ContainerStatus]] = []
    for config, status in loaded:
        if status.state == ContainerState.CREATING:
            await _discard_half_created(app, config)
        else:
            live.append((config, status))
    await _network_leftovers(app, {config.id for config, status in live if status.state in _KEEP_NETWORK})
    for config, status in live:
        await supervisor.adopt(config, status)
    if stale is not None:
        await _stale_mounts(app, supervisor, stale)


def load_containers(containers_dir: Path) -> list[tuple[ContainerConfig, ContainerStatus]]:
    """Every container on disk (blocking). One that cannot be read is logged and skipped:
    it must not keep the daemon from starting."""
    found = []
    for entry in sorted(containers_dir.iterdir()) if containers_dir.exists() else []:
        files = ContainerFiles(entry)
        try:
            found.append((files.read_config(), files.read_status()))
        except Exception as e:  # noqa: BLE001 - any unreadable file: skip it, say so
            log.error("skipping unreadable container %s: %s", entry.name, e)
    return found


async def _storage_debris(app: App) -> StaleReport | None:
    storage = app.installed_storage()
    if storage is None:
        return None
    try:
        return await storage.cleanup_stale()
    except EngineError as e:
        log.warning("stale storage cleanup failed: %s", e)
        return None


async def _discard_half_created(app: App, config: ContainerConfig) -> None:
    log.info("removing half-created container %s", config.name)
    storage = app.installed_storage()
    if storage is not None:
        try:
            await storage.remove_container(config.id)
        except EngineError as e:
            log.warning("cleanup of %s: %s", config.name, e)
    try:
        await trio.to_thread.run_sync(remove_dir, app.layout.run_container_dir(config.id))
        await trio.to_thread.run_sync(remove_dir, app.layout.container_dir(config.id))
    except EngineError as e:
        log.error("half-created container %s stays on disk (the next start retries): %s", config.name, e)
        return
    app.events.emit("container", "destroy", config.id, name=config.name, reason="half-created")


async def _network_leftovers(app: App, keep: set[str]) -> None:
    network = app.services.network
    if network is None:
        return
    try:
        if await network.needs_reconcile():
            await network.reconcile(keep)
    except EngineError as e:
        # Networking leftovers must not keep the daemon down; the log says what stayed.
        log.error("network reconcile failed: %s", e)
    await network.resume_dns(keep)  # the embedded DNS of containers that kept running


async def _stale_mounts(app: App, supervisor: ContainerSupervisor, report: StaleReport) -> None:
    """Unmount the root filesystems of containers that are not running (or gone)."""
    storage = app.installed_storage()
    if storage is None:
        return
    live = supervisor.running_ids()
    for container_id in report.mounted:
        if container_id in live:
            continue
        try:
            if container_id in supervisor.actors:
                await storage.unmount(container_id)
            else:
                await storage.remove_container(container_id)
        except EngineError as e:
            log.warning("stale mount of %s: %s", container_id, e)
