"""The container actor's everyday verbs beyond the life cycle: ``update`` of limits and
restart policy, the root filesystem handed to ``cp``/``export``, and the health probe
results. Each runs inside the actor (from its ``_dispatch`` or ``_handle_notice``), so one
at a time with every other change of the container."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import trio

from engine.actors import commands as c
from engine.actors import copy_view
from engine.actors.health import HealthMonitor, HealthState, ProbeResult, apply_result
from engine.actors.restart import RestartPolicy
from engine.actors.state import ContainerState, require_state
from engine.errors import Conflict, InvalidArgument, Timeout

if TYPE_CHECKING:
    from engine.actors.container import ContainerActor

S = ContainerState
CFS_PERIOD = 100_000  # µs, as engine.oci.spec uses at create
MIN_MEMORY = 6 * 1024 * 1024  # docker's minimum
MIN_CPU_SHARES, MAX_CPU_SHARES = 2, 262144  # the kernel's bounds for cpu.shares
COPY_WAIT_TIMEOUT = 60.0  # seconds a start waits for the copies of the stopped container


# --- update --------------------------------------------------------------------------------


def _resources(command: c.Update) -> tuple[dict[str, Any], dict[str, Any]]:
    """(changes to the config, the OCI ``linux.resources`` for the runtime)."""
    changes: dict[str, Any] = {}
    resources: dict[str, Any] = {}
    if command.memory is not None:
        if command.memory < MIN_MEMORY:
            raise InvalidArgument("memory limit must be at least 6 MiB (docker's minimum)")
        changes["memory"] = command.memory
        resources["memory"] = {"limit": command.memory}
    if command.cpus is not None:
        if not 0 < command.cpus < float("inf"):
            raise InvalidArgument("--cpus must be a positive number")
        changes["cpus"] = command.cpus
        resources["cpu"] = {"quota": int(command.cpus * CFS_PERIOD), "period": CFS_PERIOD}
    if command.pids_limit is not None:
        if command.pids_limit <= 0:
            raise InvalidArgument("--pids-limit must be positive")
        changes["pids_limit"] = command.pids_limit
        resources["pids"] = {"limit": command.pids_limit}
    cpu = _cpu_placement(command)
    if cpu:
        changes.update(cpu)
        resources.setdefault("cpu", {}).update({OCI_CPU[key]: value for key, value in cpu.items()})
    return changes, resources


OCI_CPU = {"cpu_shares": "shares", "cpuset_cpus": "cpus", "cpuset_mems": "mems"}  # config -> OCI


def _cpu_placement(command: c.Update) -> dict[str, Any]:
    """CPU weight and cpusets asked for, checked (the kernel says which CPUs exist)."""
    found: dict[str, Any] = {}
    if command.cpu_shares is not None:
        if not MIN_CPU_SHARES <= command.cpu_shares <= MAX_CPU_SHARES:
            raise InvalidArgument(f"--cpu-shares must be between {MIN_CPU_SHARES} and {MAX_CPU_SHARES}")
        found["cpu_shares"] = command.cpu_shares
    for key in ("cpuset_cpus", "cpuset_mems"):
        value = getattr(command, key)
        if value is not None:
            found[key] = check_cpuset(value, "--" + key.replace("_", "-"))
    return found


def check_cpus(cpus: float) -> None:
    """``--cpus`` as dockerd bounds it: more than none, and not more than the CPUs this
    daemon may run on (its message names 0.01, but it checks only that the value is not
    negative). The CRI does not ask this: a pod's limit may exceed the node's CPUs."""
    available = len(os.sched_getaffinity(0))
    if not 0 < cpus <= available:
        raise InvalidArgument(
            f"Range of CPUs is from 0.01 to {available}.00, as there are only {available} CPUs available")


def check_cpuset(value: str, flag: str) -> str:
    """A cpuset list as cgroups take it ("0-2,4"); the kernel checks that the CPUs exist."""
    for part in value.split(","):
        low, dash, high = part.partition("-")
        if not low.isdigit() or (dash and (not high.isdigit() or int(high) < int(low))):
            raise InvalidArgument(f"invalid {flag} {value!r}: expected a list like 0-2,4")
    return value


def _memory_swap(memory: int | None, command: c.Update, changes: dict[str, Any],
                 resources: dict[str, Any]) -> None:
    """A new memory + swap limit, checked against the memory limit it goes with (the new one
    or the kept one) as dockerd checks it; -1 lifts it."""
    swap = command.memory_swap
    if swap is None:
        return
    if swap < -1:
        raise InvalidArgument("invalid --memory-swap: use a size at least --memory, or -1 for unlimited swap")
    limit = command.memory if command.memory is not None else memory
    if swap != -1:
        if not limit:
            raise InvalidArgument("You should always set the Memory limit when using Memoryswap limit, see usage")
        if swap < limit:
            raise InvalidArgument("Minimum memoryswap limit should be larger than memory limit, see usage")
    changes["memory_swap"] = swap
    resources.setdefault("memory", {})["swap"] = swap


async def update(actor: ContainerActor, command: c.Update) -> dict[str, Any]:
    """Apply new limits to the running container's cgroup (through the runtime) and keep
    them, with the restart policy, in its config: the next start uses them too. The
    runtime first: a limit the kernel refuses changes nothing."""
    require_state(actor.name, actor.status.state, S.CREATED, S.RUNNING, S.PAUSED, S.RESTARTING, S.EXITED,
                  action="update")
    changes, resources = _resources(command)
    swap = actor.config.memory_swap
    if (command.memory is not None and command.memory_swap is None and swap is not None
            and 0 < swap < command.memory):
        raise Conflict(f"Cannot update container {actor.id}: Memory limit should be smaller than "  # dockerd's 409
                       "already set memoryswap limit, update the memoryswap at the same time")
    _memory_swap(actor.config.memory, command, changes, resources)
    if command.restart_policy is not None:
        policy = RestartPolicy.parse(command.restart_policy)
        if actor.config.auto_remove and policy.name != "no":
            raise InvalidArgument("a restart policy cannot be set on a --rm container (docker refuses it too)")
        changes["restart_policy"] = str(policy)
    if not changes:
        raise InvalidArgument("nothing to update: give --memory, --memory-swap, --cpus, --cpu-shares, "
                              "--cpuset-cpus, --cpuset-mems, --pids-limit or --restart")
    if resources and actor.status.state in (S.RUNNING, S.PAUSED):
        await actor._bounded("update", actor._runtime().update(actor.id, resources))
    updated = attrs.evolve(actor.config, **changes)
    await trio.to_thread.run_sync(actor.files.write_config, updated)
    actor.config = updated
    actor.emit("update")
    return {"Warnings": []}


# --- the root filesystem for cp and export ----------------------------------------------------


async def open_rootfs(actor: ContainerActor, *, with_mounts: bool) -> int:
    """An ``O_PATH`` fd of the container's root (see ``commands.OpenRootfs``). A stopped
    container's stays mounted until its last user posts ``ReleaseRootfs``; a start
    waits for that (``wait_for_copies``). ``with_mounts`` for a
    stopped container with volumes or binds: the root in a private mount namespace with
    them in place (engine.actors.copy_view), shared by the copies until the last ends."""
    require_state(actor.name, actor.status.state, S.CREATED, S.RUNNING, S.PAUSED, S.RESTARTING, S.EXITED,
                  action="copy files of")
    path = await actor.deps.rootfs.mount(actor.id, list(actor.config.layers))
    actor.rootfs_users += 1
    try:
        pid = _running_pid(actor) if with_mounts else 0
        if with_mounts and not pid and (actor.config.volumes or actor.config.binds):
            view = await _copy_view(actor, path)
            return await trio.to_thread.run_sync(view.open_root)
        return await trio.to_thread.run_sync(_open_root, path, pid)
    except BaseException:
        await release_rootfs(actor)
        raise


async def _copy_view(actor: ContainerActor, rootfs: Path) -> copy_view.CopyView:
    """The view the copies of the stopped container share, made when the first needs it."""
    view = actor.copy_view
    if view is not None and view.alive():
        return view
    if view is not None:  # its helper died (killed by hand?): a new one
        await close_copy_view(actor)
    holder = f"{actor.id}/cp"
    mounts: list[dict[str, Any]] = []
    volumes = actor.deps.volumes
    if volumes is not None and actor.config.volumes:
        mounts += await actor._bounded("mounting the volumes", volumes.mount(actor.config, rootfs, holder=holder))
    try:
        mounts += [{"source": b.source, "destination": b.destination, "read_only": b.read_only}
                   for b in actor.config.binds]
        actor.copy_view = await copy_view.open_view(rootfs, mounts, holder)
    except BaseException:
        if volumes is not None and actor.config.volumes:
            with trio.CancelScope(shield=True):
                await volumes.unmount(actor.config, holder=holder)
        raise
    return actor.copy_view


async def close_copy_view(actor: ContainerActor) -> None:
    """End the copies' mount namespace (its mounts go with it) and release the volumes."""
    view, actor.copy_view = actor.copy_view, None
    if view is None:
        return
    await copy_view.close(view)
    if actor.deps.volumes is not None and actor.config.volumes:
        await actor.deps.volumes.unmount(actor.config, holder=view.holder)


def _running_pid(actor: ContainerActor) -> int:
    running = actor.status.state in (S.RUNNING, S.PAUSED)
    return actor.status.pid if running and actor.status.pid > 0 else 0


def _open_root(path: Path, pid: int) -> int:
    """The root as the running container sees it (``/proc/PID/root``: its volumes, bind
    mounts and tmpfs included, as ``docker cp`` shows them), else the bare root filesystem.
    The container's process may be gone by now: then the root filesystem it is."""
    flags = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC
    if pid:
        try:
            return os.open(f"/proc/{pid}/root", flags)
        except OSError:
            pass
    return os.open(path, flags | os.O_NOFOLLOW)


async def wait_for_copies(actor: ContainerActor, action: str) -> None:
    """Until the copies (cp, export) holding the root filesystem end: docker holds a
    container's lock for a whole copy, so a start never runs under one (a copy into the
    container is complete when its process starts; a copy out of it sees the files as they
    were). The actor handles its notices meanwhile (the copies' ``ReleaseRootfs`` among
    them); commands keep their turn. Bounded: a copy held open longer fails the start."""
    deadline = trio.current_time() + COPY_WAIT_TIMEOUT
    while actor.rootfs_users:
        with trio.move_on_at(deadline) as waited:
            notice = await actor._mailbox.get_notice()
        if waited.cancelled_caught:
            raise Timeout(f"cannot {action} container {actor.name}: a copy of its files (cp or export) has "
                          f"held it for over {COPY_WAIT_TIMEOUT:g}s; {action} it again when the copy ends")
        await actor._handle_notice(notice)


async def release_rootfs(actor: ContainerActor) -> None:
    actor.rootfs_users = max(0, actor.rootfs_users - 1)
    if actor.rootfs_users == 0 and actor.copy_view is not None:
        await actor._cleanup("the copy's mounts", functools.partial(close_copy_view, actor))
    if actor.rootfs_users == 0 and actor.status.state not in (S.RUNNING, S.PAUSED) and not actor.removed:
        await actor._cleanup("unmount", actor._unmount)


# --- health ------------------------------------------------------------------------------------


def start_health(actor: ContainerActor, monitor: HealthMonitor, nursery: trio.Nursery) -> None:
    """A run began (or was adopted): probe it when the container has a check. A new run
    starts ``starting``; an adopted one keeps the state it had."""
    check = actor.config.healthcheck
    if check is None:
        actor.status.health = None
    elif actor.status.health is None or actor._run_started is not None:
        actor.status.health = HealthState()
    monitor.start(nursery, check, actor._run)


async def health_result(actor: ContainerActor, run: int, result: ProbeResult) -> None:
    check = actor.config.healthcheck
    if run != actor._run or check is None or actor.status.state != S.RUNNING:
        return  # a probe of an earlier run, or the container stopped meanwhile
    health = actor.status.health or HealthState()
    actor.status.health = health
    changed = apply_result(health, check, result, actor.status.started_at)
    await actor._persist()
    if changed:
        actor.emit(f"health_status: {health.status}")
