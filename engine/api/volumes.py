"""volume.* methods: create, list, inspect, remove, prune (docker's volume verbs)."""

from __future__ import annotations

from typing import Any

import attrs

from engine.errors import InvalidArgument, Unavailable
from engine.rpc.methods import MethodTable
from engine.rpc.server import CallContext
from engine.supervisor.containers import settle_removals
from engine.supervisor.volumes import VolumeService
from engine.volumes.store import VolumeRecord, record_view


@attrs.frozen
class CreateParams:
    name: str = ""
    driver: str = "local"
    options: dict[str, str] = attrs.field(factory=dict)
    labels: dict[str, str] = attrs.field(factory=dict)


@attrs.frozen
class NameParams:
    name: str


@attrs.frozen
class RemoveParams:
    name: str
    force: bool = False


@attrs.frozen
class ListParams:
    filters: dict[str, list[str]] = attrs.field(factory=dict)
    size: bool = False


@attrs.frozen
class PruneParams:
    filters: dict[str, list[str]] = attrs.field(factory=dict)
    all: bool = False


def volumes(ctx: CallContext) -> VolumeService:
    service = ctx.app.services.volumes
    if service is None:
        raise Unavailable("volumes are not available yet (the daemon is starting); retry")
    return service


def label_match(labels: dict[str, str], wanted: list[str]) -> bool:
    """docker's ``label=KEY`` / ``label=KEY=VALUE`` (every one must hold); ``label!=…``
    is handled by the caller through ``negate``."""
    for item in wanted:
        key, sep, value = item.partition("=")
        if key not in labels or (sep and labels[key] != value):
            return False
    return True


def volume_filter(service: VolumeService, filters: dict[str, list[str]]) -> Any:
    allowed = {"name", "label", "label!", "dangling", "driver"}
    unknown = set(filters) - allowed
    if unknown:
        raise InvalidArgument(f"unknown volume filter {', '.join(sorted(unknown))}; use "
                              f"{', '.join(sorted(allowed))}")
    for value in filters.get("dangling", []):
        if value.lower() not in ("true", "false", "1", "0"):
            raise InvalidArgument(f"invalid dangling filter {value!r}: true or false")

    def match(record: VolumeRecord) -> bool:
        if "name" in filters and not any(v in record.name for v in filters["name"]):
            return False
        if "driver" in filters and record.driver not in filters["driver"]:
            return False
        if "label" in filters and not label_match(record.labels, filters["label"]):
            return False
        if "label!" in filters and any(label_match(record.labels, [v]) for v in filters["label!"]):
            return False
        if "dangling" in filters:
            want = filters["dangling"][-1].lower() in ("true", "1")
            if want != (not service.users(record.name)):
                return False
        return True

    return match


def mountpoint(service: VolumeService, record: VolumeRecord) -> str:
    return str(service.store.path(record.name) / "_data") if record.driver == "local" else ""


def view(service: VolumeService, record: VolumeRecord, usage: int | None = None) -> dict[str, Any]:
    data = record_view(record, service.store.path(record.name), usage=usage,
                       ref_count=len(service.users(record.name)) if usage is not None else None)
    data["Mountpoint"] = mountpoint(service, record)
    return data


def register(table: MethodTable) -> None:
    @table.method("volume.create", params=CreateParams)
    async def create(ctx: CallContext, p: CreateParams) -> dict[str, Any]:
        """Create a volume (docker volume create); an existing one of that name and driver
        is returned as it is."""
        service = volumes(ctx)
        # without a name it gets a random one, but it is not anonymous (docker 23+: only
        # volumes made for a container are; `volume prune` without -a keeps this one)
        record = await service.store.create(p.name, driver=p.driver, options=dict(p.options),
                                            labels=dict(p.labels))
        return view(service, record)

    @table.method("volume.list", params=ListParams)
    async def list_(ctx: CallContext, p: ListParams) -> dict[str, Any]:
        """List volumes; filters name, label, label!, dangling, driver."""
        service = volumes(ctx)
        match = volume_filter(service, p.filters)
        found = []
        for record in service.store.list():
            if match(record):
                usage = await service.store.usage(record) if p.size else None
                found.append(view(service, record, usage))
        return {"Volumes": found, "Warnings": [f"volume {n} is broken: {why}"
                                               for n, why in sorted(service.store.broken.items())]}

    @table.method("volume.inspect", params=NameParams)
    async def inspect(ctx: CallContext, p: NameParams) -> dict[str, Any]:
        """Low-level information on a volume (docker volume inspect's shape)."""
        service = volumes(ctx)
        return view(service, service.store.get(p.name))

    @table.method("volume.remove", params=RemoveParams)
    async def remove(ctx: CallContext, p: RemoveParams) -> dict[str, Any]:
        """Remove a volume; refused while any container uses it (force does not change
        that, as in docker; it only makes a missing volume no error)."""
        service = volumes(ctx)
        if p.force and service.store.find(p.name) is None:
            return {"removed": p.name}
        await settle_removals(ctx.app)
        await service.store.remove(p.name, users=service.users(p.name))
        return {"removed": p.name}

    @table.method("volume.prune", params=PruneParams)
    async def prune(ctx: CallContext, p: PruneParams) -> dict[str, Any]:
        """Remove volumes no container uses: anonymous ones, or all with ``all`` (docker
        23+); filters label, label!."""
        service = volumes(ctx)
        filters = dict(p.filters)
        if "all" in filters:  # docker's API spelling of -a
            p = attrs.evolve(p, all=filters.pop("all")[-1].lower() in ("true", "1"))
        unknown = set(filters) - {"label", "label!"}
        if unknown:
            raise InvalidArgument(f"unknown volume prune filter {', '.join(sorted(unknown))}; "
                                  "use label, label! or all")
        await settle_removals(ctx.app)
        removed, freed = await service.prune(all_volumes=p.all, match=volume_filter(service, filters))
        return {"VolumesDeleted": removed, "SpaceReclaimed": freed}
