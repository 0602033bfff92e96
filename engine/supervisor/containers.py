"""The container supervisor: owns the nursery of container actors and the name registry.

Supervision follows OTP's one-for-one strategy: an actor that crashes (a bug, not a failed
command) has already failed its callers; the supervisor starts a fresh actor from the state
on disk after a backoff, and adopts the container again (the container itself keeps
running: only our bookkeeping restarts). An actor that crashes more than ``max_restarts``
times within ``window`` seconds is given up on: the container is marked with the reason
(``inspect``'s State.Error), an ``actor_give_up`` event says so, and its commands are
refused until the daemon restarts.
"""

from __future__ import annotations

import logging
import random
import re
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import trio

from engine.actors.commands import Adopt, Rename
from engine.actors.container import ContainerActor
from engine.actors.deps import ActorDeps, Registry
from engine.actors.model import (
    ContainerConfig,
    ContainerFiles,
    ContainerStatus,
    new_container_id,
    remove_dir,
)
from engine.actors.state import ACTIVE, ContainerState
from engine.errors import AlreadyExists, InvalidArgument, NotFound

log = logging.getLogger("engine.supervisor")

NAME_RE = re.compile(r"^/?[a-zA-Z0-9][a-zA-Z0-9_.-]*$")

_ADJECTIVES = ("brave", "calm", "eager", "fond", "keen", "lucid", "merry", "quiet", "swift", "wise")
_NOUNS = ("turing", "hopper", "lovelace", "ritchie", "thompson", "knuth", "liskov", "dijkstra", "hamilton", "perlman")


@attrs.frozen
class SupervisionPolicy:
    """OTP's restart intensity: at most ``max_restarts`` actor restarts in ``window``
    seconds, each after a backoff doubling from ``base_backoff`` up to ``max_backoff``
    (crashes older than the window are forgotten, which resets the backoff)."""

    max_restarts: int = 5
    window: float = 60.0
    base_backoff: float = 0.1
    max_backoff: float = 5.0

    def backoff(self, recent_crashes: int) -> float:
        return float(min(self.max_backoff, self.base_backoff * 2 ** max(0, recent_crashes - 1)))


RELEASE_WAIT = 30.0  # seconds a network/volume removal waits for removed containers to free them


class ContainerSupervisor:
    """Implements the actors' ``Registry``: told when a container is gone for everyone."""

    def __init__(self, containers_dir: Path, make_deps: Callable[[Registry], ActorDeps],
                 *, policy: SupervisionPolicy | None = None) -> None:
        self.containers_dir = containers_dir
        self.deps = make_deps(self)
        self.policy = policy or SupervisionPolicy()
        self.actors: dict[str, ContainerActor] = {}
        self.names: dict[str, str] = {}
        self._nursery: trio.Nursery | None = None
        self._registry_lock = trio.Lock()
        # removed, gone by name, still freeing their networks and mounts (`--rm`)
        self.releasing: dict[str, ContainerActor] = {}

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

    def image_in_use(self, image_id: str) -> bool:
        """Whether any container (running or not) was created from the image."""
        return any(a.config.image_id == image_id for a in self.actors.values())

    def running_ids(self) -> set[str]:
        return {cid for cid, a in self.actors.items() if a.status.state in ACTIVE}

    # --- life of the supervisor --------------------------------------------------------------

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started(self)
            await trio.sleep_forever()

    async def adopt(self, config: ContainerConfig, status: ContainerStatus) -> ContainerActor:
        """Take over a container found on disk at start-up (live-restore)."""
        actor = ContainerActor(self.deps, config, status)
        await self._spawn(actor)
        actor.notify(Adopt())
        return actor

    async def _spawn(self, actor: ContainerActor) -> None:
        assert self._nursery is not None, "the supervisor is not running"
        self.actors[actor.id] = actor
        self.names[actor.name] = actor.id
        await self._nursery.start(self._supervise, actor)

    async def _supervise(self, actor: ContainerActor, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        crashes: deque[float] = deque()
        status = task_status
        while True:
            try:
                await actor.run(task_status=status)
                return  # removed
            except Exception as e:  # the actor has failed its callers already
                reason = actor.crashed or f"{type(e).__name__}: {e}"
            status = trio.TASK_STATUS_IGNORED
            now = trio.current_time()
            crashes.append(now)
            while crashes and crashes[0] < now - self.policy.window:
                crashes.popleft()
            actor.emit("actor_crash", reason=reason, crashes=len(crashes))
            if len(crashes) > self.policy.max_restarts:
                await self._give_up(actor, reason, len(crashes))
                return
            await trio.sleep(self.policy.backoff(len(crashes)) * (1 + 0.1 * random.random()))
            actor = await self._fresh_actor(actor)
            actor.notify(Adopt())

    async def _fresh_actor(self, old: ContainerActor) -> ContainerActor:
        config, status = await trio.to_thread.run_sync(_read_container, old.files)
        actor = ContainerActor(self.deps, config, status)
        self.actors[actor.id] = actor
        return actor

    async def _give_up(self, actor: ContainerActor, reason: str, crashes: int) -> None:
        message = (f"the daemon stopped supervising this container: its actor crashed {crashes} times "
                   f"within {self.policy.window:g}s (last: {reason}); restart the daemon to retry")
        log.error("container %s: %s", actor.name, message)
        actor.status.error = message
        try:
            await trio.to_thread.run_sync(actor.files.write_status, actor.status)
        except OSError as e:
            log.error("container %s: cannot record the give-up: %s", actor.name, e)
        actor.abandon(message)
        actor.emit("actor_give_up", reason=reason, crashes=crashes)

    def forget(self, actor: ContainerActor) -> None:
        if self.actors.get(actor.id) is actor:
            self.actors.pop(actor.id, None)
        if self.names.get(actor.name) == actor.id:
            self.names.pop(actor.name, None)
        self.releasing = {cid: a for cid, a in self.releasing.items() if not a.released}
        if not actor.released:
            self.releasing[actor.id] = actor

    async def settle_removals(self) -> None:
        """Until the containers removed a moment ago have let go of their networks and
        mounts: a `--rm` run answers once its container is gone, and frees them after. A
        network or volume removal waits for that, so a script's next line finds them free."""
        with trio.move_on_after(RELEASE_WAIT):
            for actor in list(self.releasing.values()):
                await actor.wait_released()
        self.releasing = {cid: a for cid, a in self.releasing.items() if not a.released}

    # --- create, rename ------------------------------------------------------------------------

    async def create(self, config: ContainerConfig) -> ContainerActor:
        async with self._registry_lock:
            if not config.name:
                config.name = self._generate_name()
            self._check_name(config.name)
            config.id = config.id or new_container_id()
            actor = ContainerActor(self.deps, config, ContainerStatus(state=ContainerState.CREATED), new=True)
            try:
                await trio.to_thread.run_sync(_write_new_container, actor.files, config, actor.status,
                                              actor.run_dir)
            except BaseException:
                with trio.CancelScope(shield=True):  # a full disk must not leave half a container
                    await trio.to_thread.run_sync(_remove_container_dirs, actor)
                raise
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
            await actor.call(Rename(new_name))  # applied whole (on disk first) or not at all
            self.names.pop(old, None)
            self.names[new_name] = actor.id


def _read_container(files: ContainerFiles) -> tuple[ContainerConfig, ContainerStatus]:
    return files.read_config(), files.read_status()


def _write_new_container(files: ContainerFiles, config: ContainerConfig, status: ContainerStatus,
                         run_dir: Path) -> None:
    """The status file goes last: a crash before it leaves a config without a status,
    which reads as CREATING and is discarded at the next start."""
    run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)  # the bundle's spec holds the env
    files.write_config(config)
    files.write_status(status)


def _remove_container_dirs(actor: ContainerActor) -> None:
    remove_dir(actor.run_dir)
    remove_dir(actor.files.dir)


async def settle_removals(app: Any) -> None:
    """``ContainerSupervisor.settle_removals`` of the app's containers, if they are up."""
    containers = app.services.containers
    if containers is not None:
        await containers.settle_removals()
