"""The container supervisor: owns the nursery of container actors and the name registry.

At start-up it reads every container from disk and adopts it (live-restore): running
containers keep running and are watched again, those that ended meanwhile get their real
exit code, half-created ones are removed, and stale mounts and runtime state are cleaned.
Actors that crash are restarted (the container itself is not touched by that).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from engine.actors.container import ContainerActor
from engine.actors.model import ContainerConfig, ContainerFiles, ContainerStatus, new_container_id
from engine.actors.state import ACTIVE, ContainerState
from engine.errors import AlreadyExists, EngineError, InvalidArgument, NotFound
from engine.oci.spec import SpecOptions, build_spec
from engine.store.atomic import write_bytes_atomic
from engine.store.rmtree import remove_tree
from engine.supervisor.app import App

log = logging.getLogger("engine.supervisor")
ATTACHED_READERS_WAIT = 10.0  # seconds the files of a removed container wait for its readers

NAME_RE = re.compile(r"^/?[a-zA-Z0-9][a-zA-Z0-9_.-]*$")
ACTOR_RESTART_DELAY = 0.5

_ADJECTIVES = ("brave", "calm", "eager", "fond", "keen", "lucid", "merry", "quiet", "swift", "wise")
_NOUNS = ("turing", "hopper", "lovelace", "ritchie", "thompson", "knuth", "liskov", "dijkstra", "hamilton", "perlman")


class ContainerSupervisor:
    def __init__(self, app: App) -> None:
        self.app = app
        self.actors: dict[str, ContainerActor] = {}
        self.names: dict[str, str] = {}
        self._nursery: trio.Nursery | None = None
        self._registry_lock = trio.Lock()

    # --- lookup ------------------------------------------------------------------------------

    def get(self, ref: str) -> ContainerActor:
        if not isinstance(ref, str) or not ref:
            raise InvalidArgument("a container name or id is required")
        name = ref.lstrip("/")
        if name in self.names:
            return self.actors[self.names[name]]
        if ref in self.actors:
            return self.actors[ref]
        matches = [a for cid, a in self.actors.items() if cid.startswith(ref)] if len(ref) >= 3 else []
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise InvalidArgument(f"container id prefix {ref!r} is ambiguous: give more characters")
        raise NotFound(f"no such container: {ref}")

    def all(self) -> list[ContainerActor]:
        return sorted(self.actors.values(), key=lambda a: a.config.created, reverse=True)

    def counts(self) -> dict[str, int]:
        states = [a.status.state for a in self.actors.values()]
        return {
            "containers": len(states),
            "running": sum(s == ContainerState.RUNNING for s in states),
            "paused": sum(s == ContainerState.PAUSED for s in states),
            "stopped": sum(s not in ACTIVE for s in states),
        }

    # --- life of the supervisor --------------------------------------------------------------

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            loaded = await trio.to_thread.run_sync(self._load_all)
            for config, status in loaded:
                if status.state == ContainerState.CREATING:
                    await self._discard_half_created(config)
                    continue
                if status.state == ContainerState.REMOVING:
                    # removed already as far as anyone could see; its files were not
                    self.finish_removal(ContainerActor(self, config, status))
                    continue
                actor = ContainerActor(self, config, status)
                await self._spawn(actor)
                actor.post("adopt")
            await self._clean_stale_mounts()
            task_status.started(self)
            await trio.sleep_forever()

    def _load_all(self) -> list[tuple[ContainerConfig, ContainerStatus]]:
        found = []
        containers_dir = self.app.layout.containers_dir
        for entry in sorted(containers_dir.iterdir()) if containers_dir.exists() else []:
            files = ContainerFiles(entry)
            try:
                config = files.read_config()
                status = files.read_status()
            except (OSError, ValueError, EngineError, Exception) as e:  # noqa: BLE001
                log.error("skipping unreadable container %s: %s", entry.name, e)
                continue
            found.append((config, status))
        return found

    async def _spawn(self, actor: ContainerActor) -> None:
        assert self._nursery is not None
        self.actors[actor.id] = actor
        self.names[actor.name] = actor.id
        await self._nursery.start(self._supervise, actor)

    async def _supervise(self, actor: ContainerActor, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Run an actor; if its code crashes, start a fresh one from disk (the container
        itself keeps running: only our bookkeeping restarts)."""
        started = False
        while True:
            try:
                if not started:
                    await actor.run(task_status=task_status)
                    started = True
                else:
                    await actor.run()
            except Exception:
                log.exception("actor of container %s crashed; restarting it", actor.name)
                started = True
                await trio.sleep(ACTOR_RESTART_DELAY)
                config = await trio.to_thread.run_sync(actor.files.read_config)
                status = await trio.to_thread.run_sync(actor.files.read_status)
                actor = ContainerActor(self, config, status)
                self.actors[actor.id] = actor
                actor.post("adopt")
                continue
            if actor.removed:
                self.actors.pop(actor.id, None)
                if self.names.get(actor.name) == actor.id:
                    self.names.pop(actor.name, None)
            return

    def finish_removal(self, actor: ContainerActor) -> None:
        """Free what a removed container still holds and delete its files, in the
        background (``--rm``: the removal is told at once, the work follows)."""
        assert self._nursery is not None
        self._nursery.start_soon(self._complete_removal, actor)

    async def _complete_removal(self, actor: ContainerActor) -> None:
        try:
            # An attached `run --rm` reads the log to its end and replies first: the work
            # below (process spawns, unmount) would only compete with it for the CPU.
            with trio.move_on_after(ATTACHED_READERS_WAIT):
                await actor.wait_attached_done()
            await actor.release_run_resources()
            await self.destroy_files(actor)
        except EngineError as e:
            log.error("removal of container %s is incomplete: %s; the daemon finishes it at "
                      "its next start", actor.name, e)

    async def _discard_half_created(self, config: ContainerConfig) -> None:
        log.info("removing half-created container %s", config.name)
        storage = self.app.plugins.register.storage_drivers.get(self.app.config.storage_driver)
        if storage is not None:
            try:
                await storage.remove_container(config.id)
            except EngineError as e:
                log.warning("cleanup of %s: %s", config.name, e)
        await trio.to_thread.run_sync(self._remove_dirs, config.id)
        self.app.events.emit("container", "destroy", config.id, name=config.name, reason="half-created")

    async def _clean_stale_mounts(self) -> None:
        """Remove what interrupted storage operations left, and unmount the root
        filesystems of containers that are not running (or no longer exist)."""
        storage = self.app.plugins.register.storage_drivers.get(self.app.config.storage_driver)
        cleanup = getattr(storage, "cleanup_stale", None)
        if storage is None or cleanup is None:
            return
        try:
            report = await cleanup()
        except EngineError as e:
            log.warning("stale storage cleanup failed: %s", e)
            return
        live = {cid for cid, a in self.actors.items() if a.status.state in ACTIVE}
        for container_id in getattr(report, "mounted", []):
            if container_id in live:
                continue
            try:
                if container_id in self.actors:
                    await storage.unmount(container_id)
                else:
                    await storage.remove_container(container_id)
            except EngineError as e:
                log.warning("stale mount of %s: %s", container_id, e)

    # --- create ------------------------------------------------------------------------------

    async def create(self, config: ContainerConfig) -> ContainerActor:
        async with self._registry_lock:
            if not config.name:
                config.name = self._generate_name()
            self._check_name(config.name)
            config.id = config.id or new_container_id()
            files = ContainerFiles(self.app.layout.container_dir(config.id))
            status = ContainerStatus(state=ContainerState.CREATED)
            run_dir = self.app.layout.run_container_dir(config.id)
            try:
                await trio.to_thread.run_sync(_write_new_container, files, config, status, run_dir)
            except BaseException:
                with trio.CancelScope(shield=True):  # a full disk must not leave half a container
                    await trio.to_thread.run_sync(self._remove_dirs, config.id)
                raise
            actor = ContainerActor(self, config, status)
            actor.runtime_knows = False
            await self._spawn(actor)
        actor.emit("create")
        return actor

    def _check_name(self, name: str) -> None:
        if not NAME_RE.match(name):
            raise InvalidArgument(
                f"invalid container name {name!r}: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"
            )
        if name in self.names:
            raise AlreadyExists(
                f"the container name {name!r} is already in use by container "
                f"{self.names[name][:12]}; remove or rename that container first"
            )

    def _generate_name(self) -> str:
        import random

        for _ in range(100):
            name = f"{random.choice(_ADJECTIVES)}_{random.choice(_NOUNS)}"
            if name not in self.names:
                return name
        return f"ctr_{new_container_id()[:8]}"

    async def rename(self, ref: str, new_name: str) -> None:
        async with self._registry_lock:
            actor = self.get(ref)
            new_name = new_name.lstrip("/")
            if new_name == actor.name:
                return
            self._check_name(new_name)
            old = actor.name
            await actor.call("rename", new_name=new_name)
            self.names.pop(old, None)
            self.names[new_name] = actor.id

    # --- storage and bundle, used by actors ----------------------------------------------------

    async def prepare_rootfs(self, actor: ContainerActor) -> Path:
        storage = self.app.storage()
        return await storage.mount(actor.id, list(actor.config.layers), read_only=False)

    async def release_rootfs(self, actor: ContainerActor) -> None:
        storage = self.app.plugins.register.storage_drivers.get(self.app.config.storage_driver)
        if storage is None:
            return
        try:
            await storage.unmount(actor.id)
        except EngineError as e:
            log.warning("container %s: unmount failed: %s", actor.name, e)

    async def write_bundle(self, actor: ContainerActor, rootfs: Path) -> Path:
        from engine.supervisor.bundle import spec_options

        bundle = actor.bundle_dir
        options = spec_options(actor.config, actor.status, rootfs)
        # A runtime may add what only it understands (crun: the precompiled seccomp program).
        adapt = getattr(self.app.runtime(actor.config.runtime), "adapt_spec", None)
        await trio.to_thread.run_sync(_write_spec, bundle, options, adapt)
        return bundle

    async def destroy_files(self, actor: ContainerActor) -> None:
        storage = self.app.plugins.register.storage_drivers.get(self.app.config.storage_driver)
        if storage is not None:
            await storage.remove_container(actor.id)
        hooks = self.app.services.get("container_destroy_hooks", [])
        for hook in hooks:
            await hook(actor)
        await trio.to_thread.run_sync(self._remove_dirs, actor.id)

    def _remove_dirs(self, container_id: str) -> None:
        for path in (self.app.layout.run_container_dir(container_id),
                     self.app.layout.container_dir(container_id)):
            try:
                remove_tree(path)  # iterative: no depth makes it fail
            except OSError as e:
                log.warning("cannot delete %s: %s", path, e)


def _write_new_container(files: ContainerFiles, config: ContainerConfig, status: ContainerStatus,
                         run_dir: Path) -> None:
    """The status file goes last: a crash before it leaves a config without a status,
    which reads as CREATING and is discarded at the next start."""
    run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)  # the bundle's spec holds the env
    files.write_config(config)
    files.write_status(status)


def _write_spec(bundle: Path, options: SpecOptions,
                adapt: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> None:
    spec = build_spec(options)
    if adapt is not None:
        spec = adapt(spec)
    bundle.mkdir(mode=0o700, parents=True, exist_ok=True)
    # compact: the runtime reads it, and it is written at every start; owner only: it
    # holds the container's environment
    data = json.dumps(spec, separators=(",", ":")).encode()
    write_bytes_atomic(bundle / "config.json", data, mode=0o600, durable=False)


async def start_containers(app: App, nursery: trio.Nursery) -> None:
    supervisor = ContainerSupervisor(app)
    app.services["containers"] = supervisor
    await nursery.start(supervisor.run)

