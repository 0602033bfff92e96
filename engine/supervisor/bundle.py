"""From a container's config to what the runtime runs: the resolved process (docker's rules,
in ``engine.oci.spec``) and the OCI bundle's config.json (``Bundles``, the actors'
``BundleBuilder``)."""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath
from typing import Any

import attrs
import trio

from engine.actors.model import ContainerConfig, ContainerStatus
from engine.oci.propagation import check_sources
from engine.oci.spec import (
    BindMount,
    ProcessOverrides,
    SpecOptions,
    TmpfsMount,
    build_spec,
    merge_env,
    resolve_process,
)
from engine.plugin import Runtime
from engine.store.atomic import write_bytes_atomic


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
    # docker's default for a bind is rprivate; runc's would be a slave of the host's mount
    mounts = [BindMount(Path(b.source), b.destination, b.read_only, (b.propagation or "rprivate",))
              for b in config.binds]
    mounts += [
        BindMount(Path(m["source"]), m["destination"], bool(m.get("read_only", False)))
        for m in details.get("_mounts", [])
    ]
    mounts += [
        BindMount(Path(m["source"]), m["destination"], bool(m.get("read_only", False)))
        for m in status.volume_mounts
    ]
    # docker's order: a mount inside another one's destination goes after it
    mounts.sort(key=lambda m: len(PurePosixPath(m.destination).parts))
    tmpfs = [
        TmpfsMount(t.destination, tuple(o for o in t.options.split(",") if o) or TmpfsMount(t.destination).options)
        for t in config.tmpfs
    ]
    return SpecOptions(
        container_id=config.id,
        rootfs=rootfs,
        args=list(config.args),
        env=with_term(list(config.env)) if config.tty else list(config.env),
        cwd=config.workdir or "/",
        user=config.user,
        hostname=config.hostname or config.id[:12],
        domainname=config.domainname,
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
        terminal=config.tty,
        namespaces=dict(config.namespaces),
        cgroups_path=config.cgroups_path or None,
        annotations=dict(config.annotations),
        privileged=config.privileged,
        no_new_privileges=config.no_new_privileges,
        seccomp_profile=Path(config.seccomp_profile) if config.seccomp_profile else None,
        sysctls=dict(config.sysctls),
        spec_patch=dict(config.spec_patch),
        additional_gids=list(config.additional_gids),
        cpu_shares=config.cpu_shares,
        cpuset_cpus=config.cpuset_cpus,
        cpuset_mems=config.cpuset_mems,
        rlimits={name: (soft, hard) for name, (soft, hard) in config.ulimits.items()},
        oom_score_adj=config.oom_score_adj,
        memory_swap=config.memory_swap,
        shm_size=config.shm_size,
        group_add=list(config.group_add),
        seccomp_template=json.loads(config.seccomp_json) if config.seccomp_json else None,
        cpu_quota=config.cpu_quota,
        cpu_period=config.cpu_period,
        memory_reservation=config.memory_reservation,
        oom_kill_disable=config.oom_kill_disable,
        devices=list(config.devices),
    )


def with_term(env: list[str]) -> list[str]:
    """A terminal's programs need TERM; docker sets xterm unless the user chose one."""
    if any(item.startswith("TERM=") for item in env):
        return env
    return [*env, "TERM=xterm"]


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


class Bundles:
    """Writes a container's OCI bundle at every start. The bundle holds the container's
    environment (secrets, often): 0700 directory, 0600 config.json."""

    async def write_bundle(self, config: ContainerConfig, status: ContainerStatus, rootfs: Path,
                           bundle_dir: Path, runtime: Runtime) -> None:
        options = spec_options(config, status, rootfs)
        await trio.to_thread.run_sync(_write_spec, bundle_dir, options, runtime)

    async def exec_process(self, config: ContainerConfig, status: ContainerStatus, rootfs: Path,
                           cmd: list[str], *, env: list[str], workdir: str, user: str) -> dict[str, Any]:
        return await exec_process(config, status, rootfs, cmd, env=env, workdir=workdir, user=user)


def _write_spec(bundle: Path, options: SpecOptions, runtime: Runtime) -> None:
    # the host may have changed since create: a bind that can no longer propagate is refused
    check_sources([(str(m.source), o) for m in options.mounts for o in m.options])
    # A runtime may add what only it understands (crun: the precompiled seccomp program).
    spec = runtime.adapt_spec(build_spec(options))
    bundle.mkdir(mode=0o700, parents=True, exist_ok=True)
    # compact: the runtime reads it, and it is written at every start
    data = json.dumps(spec, separators=(",", ":")).encode()
    write_bytes_atomic(bundle / "config.json", data, mode=0o600, durable=False)
