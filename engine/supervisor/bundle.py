"""From a container's config to what the runtime runs: the resolved process (docker's rules,
in ``engine.oci.spec``) and the OCI bundle's config.json."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import trio

from engine.actors.model import ContainerConfig, ContainerStatus
from engine.oci.spec import (
    BindMount,
    ProcessOverrides,
    SpecOptions,
    TmpfsMount,
    build_spec,
    merge_env,
    resolve_process,
)


def image_process_defaults(image_config: Any) -> dict[str, Any]:
    """The OCI ``config`` section (Entrypoint, Cmd, Env, WorkingDir, User) of a parsed image."""
    c = image_config.config
    return {
        "Entrypoint": c.entrypoint,
        "Cmd": c.cmd,
        "Env": c.env or [],
        "WorkingDir": c.working_dir,
        "User": c.user,
    }


def resolve(image_config: Any, *, entrypoint: list[str] | None, cmd: list[str] | None,
            env: list[str], workdir: str, user: str) -> tuple[list[str], list[str], str, str]:
    process = resolve_process(
        image_process_defaults(image_config),
        ProcessOverrides(entrypoint=entrypoint, cmd=cmd, env=env, workdir=workdir or None,
                         user=user or None),
    )
    return process.args, process.env, process.cwd, process.user


def spec_options(config: ContainerConfig, status: ContainerStatus, rootfs: Path) -> SpecOptions:
    """The runtime's view of a container: the one boundary where the stored config's
    ``-v``/``--tmpfs`` records (engine.actors.model: strings, as the user gave them and as
    config.json keeps them) become engine.oci.spec's mounts (paths and option tuples)."""
    details = status.network_details or {}
    mounts = [BindMount(Path(b.source), b.destination, b.read_only) for b in config.binds]
    mounts += [
        BindMount(Path(m["source"]), m["destination"], bool(m.get("read_only", False)))
        for m in details.get("_mounts", [])
    ]
    tmpfs = [
        TmpfsMount(t.destination, tuple(o for o in t.options.split(",") if o) or TmpfsMount(t.destination).options)
        for t in config.tmpfs
    ]
    return SpecOptions(
        container_id=config.id,
        rootfs=rootfs,
        args=list(config.args),
        env=list(config.env),
        cwd=config.workdir or "/",
        user=config.user,
        hostname=config.hostname or config.id[:12],
        mounts=mounts,
        tmpfs=tmpfs,
        read_only=config.read_only,
        init=config.init,
        memory=config.memory,
        cpus=config.cpus,
        pids_limit=config.pids_limit,
        cap_add=list(config.cap_add),
        cap_drop=list(config.cap_drop),
        network_ns=details.get("_netns"),
    )


async def exec_process(config: ContainerConfig, status: ContainerStatus, rootfs: Path,
                       cmd: list[str], *, env: list[str], workdir: str, user: str) -> dict[str, Any]:
    """An OCI ``process`` object for ``exec``: the container's env, user, cwd, capabilities
    and limits unless overridden."""
    options = attrs.evolve(
        spec_options(config, status, rootfs),
        args=list(cmd),
        env=merge_env(list(config.env), list(env)),
        cwd=workdir or config.workdir or "/",
        user=user or config.user,
        init=False,
    )
    spec = await trio.to_thread.run_sync(build_spec, options)
    process: dict[str, Any] = spec["process"]
    process["terminal"] = False
    return process
