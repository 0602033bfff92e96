"""docker's ``Mounts`` of a container's inspect: its binds, volumes and tmpfs mounts."""

from __future__ import annotations

from typing import Any

from engine.actors.model import ContainerConfig, ContainerStatus


def mounts_view(config: ContainerConfig, status: ContainerStatus) -> list[dict[str, Any]]:
    """The host path of a volume is the one its last run mounted (unknown before a run)."""
    sources = {m.get("name"): m.get("source", "") for m in status.volume_mounts}
    drivers = {m.get("name"): m.get("driver", "") for m in status.volume_mounts}
    mounts: list[dict[str, Any]] = []
    for b in config.binds:
        mounts.append({"Type": "bind", "Source": b.source, "Destination": b.destination,
                       "Mode": "ro" if b.read_only else "", "RW": not b.read_only,
                       "Propagation": b.propagation or "rprivate"})
    for v in config.volumes:
        mounts.append({"Type": "volume", "Name": v.name, "Source": sources.get(v.name, ""), "Destination": v.destination,
                       "Driver": drivers.get(v.name, ""), "Mode": "z", "RW": not v.read_only, "Propagation": "",
                       "Anonymous": v.anonymous})
    for t in config.tmpfs:
        if t.from_mount:  # docker lists a --mount tmpfs here, a --tmpfs only in HostConfig.Tmpfs
            mounts.append({"Type": "tmpfs", "Source": "", "Destination": t.destination,
                           "Mode": "", "RW": "ro" not in t.options.split(","), "Propagation": ""})
    return mounts
