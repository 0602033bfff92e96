"""The whole daemon's disk: ``system df`` (what images, containers and volumes take, as
``du`` counts it, and what could be reclaimed), ``system prune`` and the prune filters
(``until``, ``label``) shared by the per-noun prunes."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

import trio

from engine.actors.model import iso_time
from engine.actors.state import ContainerState
from engine.errors import InvalidArgument
from engine.store.du import content_size, disk_usage

if TYPE_CHECKING:
    from engine.actors.container import ContainerActor
    from engine.images.records import Image
    from engine.network.networks import Network
    from engine.supervisor.app import App

RUNNING = (ContainerState.RUNNING, ContainerState.PAUSED, ContainerState.RESTARTING)
STOPPED = (ContainerState.EXITED, ContainerState.CREATED, ContainerState.DEAD)
_DURATION = re.compile(r"^(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?$")


# --- filters --------------------------------------------------------------------------------------


def parse_until(text: str, now: float | None = None) -> float:
    """docker's ``until``: unix seconds, an RFC 3339 time, or a duration ago (``24h``,
    ``1h30m``, ``90s``)."""
    now = time.time() if now is None else now
    value = text.strip()
    try:
        return float(value)
    except ValueError:
        pass
    m = _DURATION.match(value)
    if m and any(m.groups()):
        hours, minutes, seconds = (float(g) if g else 0.0 for g in m.groups())
        return now - (hours * 3600 + minutes * 60 + seconds)
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise InvalidArgument(f"invalid until filter {text!r}: use unix seconds, an RFC 3339 "
                              "time or a duration like 24h or 10m") from None


def labels_match(labels: dict[str, str], filters: dict[str, list[str]]) -> bool:
    """``label=K``/``label=K=V`` (all must hold) and ``label!=K``/``label!=K=V`` (none may)."""
    for item in filters.get("label", []):
        key, sep, value = item.partition("=")
        if key not in labels or (sep and labels[key] != value):
            return False
    for item in filters.get("label!", []):
        key, sep, value = item.partition("=")
        if key in labels and (not sep or labels[key] == value):
            return False
    return True


def prune_filter(filters: dict[str, list[str]], *, created: Callable[[Any], float],
                 labels: Callable[[Any], dict[str, str]], what: str,
                 extra: tuple[str, ...] = ()) -> Callable[[Any], bool]:
    """A prune's ``--filter until=…`` (created before) and ``label``/``label!`` filters."""
    allowed = {"until", "label", "label!", *extra}
    unknown = set(filters) - allowed
    if unknown:
        raise InvalidArgument(f"unknown {what} prune filter {', '.join(sorted(unknown))}; "
                              f"use {', '.join(sorted(allowed))}")
    untils = [parse_until(v) for v in filters.get("until", [])]

    def match(obj: Any) -> bool:
        if untils and not created(obj) < min(untils):
            return False
        return labels_match(labels(obj), filters)

    return match


def image_created(image: Image) -> float:
    try:
        return datetime.fromisoformat(image.created.replace("Z", "+00:00")).timestamp()
    except (ValueError, AttributeError):
        return image.added_at


def image_labels(image: Image) -> dict[str, str]:
    return dict(image.config.config.labels or {})


def container_filter(filters: dict[str, list[str]]) -> Callable[[ContainerActor], bool]:
    return prune_filter(filters, created=lambda a: a.config.created, labels=lambda a: a.config.labels,
                        what="container")


def image_filter(filters: dict[str, list[str]]) -> Callable[[Image], bool]:
    return prune_filter(filters, created=image_created, labels=image_labels, what="image",
                        extra=("dangling",))


def network_filter(filters: dict[str, list[str]]) -> Callable[[Network], bool]:
    return prune_filter(filters, created=lambda n: n.created, labels=lambda n: n.labels, what="network")


# --- system df ------------------------------------------------------------------------------------


async def container_sizes(app: App, actors: list[Any]) -> dict[str, tuple[int, int]]:
    """Each container's (SizeRw, SizeRootFs) as docker counts them (``ps -s``, ``system
    df``): the bytes of its writable layer's files, and that plus its image's layers."""
    driver = app.storage()
    layer_ids = sorted({d for a in actors for d in a.config.layers})

    def measure() -> dict[str, tuple[int, int]]:
        layer_size = {d: disk_usage(driver.layer_path(d)) for d in layer_ids}
        sizes = {}
        for a in actors:
            rw = content_size(driver.container_layer_path(a.id))
            sizes[a.id] = (rw, rw + sum(layer_size.get(d, 0) for d in set(a.config.layers)))
        return sizes

    return await trio.to_thread.run_sync(measure)


async def disk_usage_report(app: App) -> dict[str, Any]:
    """docker's ``system df -v`` data: every image, container and volume with its size on
    disk (du's count), shared and unique image sizes, and what prune could reclaim."""
    store = app.services.require_images()
    supervisor = app.services.require_containers()
    driver = app.storage()
    images = store.list()
    actors = supervisor.all()

    layer_ids = sorted({d for image in images for d in image.diff_ids})

    def measure_layers() -> dict[str, int]:
        return {d: disk_usage(driver.layer_path(d)) for d in layer_ids}

    layer_size = await trio.to_thread.run_sync(measure_layers)
    layer_users: dict[str, int] = {}
    for image in images:
        for d in set(image.diff_ids):
            layer_users[d] = layer_users.get(d, 0) + 1
    users_of: dict[str, int] = {}
    for actor in actors:
        users_of[actor.config.image_id] = users_of.get(actor.config.image_id, 0) + 1

    image_rows = []
    for image in images:
        layers = set(image.diff_ids)
        size = sum(layer_size[d] for d in layers)
        shared = sum(layer_size[d] for d in layers if layer_users[d] > 1)
        image_rows.append({
            "Id": image.id, "RepoTags": image.familiar_tags(), "Created": int(image_created(image)),
            "Size": size, "SharedSize": shared, "UniqueSize": size - shared,
            "Containers": users_of.get(image.id, 0),
        })
    active_layers = {d for image in images if users_of.get(image.id) for d in image.diff_ids}
    images_total = sum(layer_size.values())
    images_active = sum(layer_size[d] for d in active_layers)

    def measure_containers() -> dict[str, int]:
        return {a.id: disk_usage(driver.container_layer_path(a.id)) for a in actors}

    rw = await trio.to_thread.run_sync(measure_containers)
    container_rows = [{
        "Id": a.id, "Names": [a.name], "Image": a.config.image, "ImageID": a.config.image_id,
        "Created": int(a.config.created), "State": a.status.state.value, "SizeRw": rw[a.id],
        "SizeRootFs": rw[a.id] + sum(layer_size.get(d, 0) for d in set(a.config.layers)),
    } for a in actors]

    volume_rows: list[dict[str, Any]] = []
    service = app.services.volumes
    if service is not None:
        for record in service.store.list():
            size = await service.store.usage(record)
            volume_rows.append({
                "Name": record.name, "Driver": record.driver, "Labels": record.labels,
                "Anonymous": record.anonymous, "CreatedAt": iso_time(record.created),
                "UsageData": {"Size": size, "RefCount": len(service.users(record.name))},
            })
    containers_total = sum(rw.values())
    containers_reclaimable = sum(rw[a.id] for a in actors if a.status.state not in RUNNING)
    volumes_total = sum(max(v["UsageData"]["Size"], 0) for v in volume_rows)
    volumes_reclaimable = sum(max(v["UsageData"]["Size"], 0) for v in volume_rows
                              if v["UsageData"]["RefCount"] == 0)
    cache_rows = build_cache_rows(app)
    return {
        "LayersSize": images_total,
        "Images": image_rows,
        "Containers": container_rows,
        "Volumes": volume_rows,
        "BuildCache": cache_rows,
        "Summary": [
            {"Type": "Images", "TotalCount": len(images), "Active": sum(1 for i in images if users_of.get(i.id)),
             "Size": images_total, "Reclaimable": images_total - images_active},
            {"Type": "Containers", "TotalCount": len(actors),
             "Active": sum(1 for a in actors if a.status.state in RUNNING),
             "Size": containers_total, "Reclaimable": containers_reclaimable},
            {"Type": "Local Volumes", "TotalCount": len(volume_rows),
             "Active": sum(1 for v in volume_rows if v["UsageData"]["RefCount"]),
             "Size": volumes_total, "Reclaimable": volumes_reclaimable},
            {"Type": "Build Cache", "TotalCount": len(cache_rows), "Active": sum(1 for r in cache_rows if r["InUse"]),
             "Size": sum(r["Size"] for r in cache_rows),
             "Reclaimable": sum(r["Size"] for r in cache_rows if not r["InUse"])},
        ],
    }


# --- system prune -----------------------------------------------------------------------------


async def system_prune(app: App, *, all_images: bool, volumes: bool,
                       filters: dict[str, list[str]]) -> dict[str, Any]:
    """docker's ``system prune``: stopped containers, unused networks, dangling (``-a``:
    unused) images and, with ``volumes``, unused anonymous volumes; filters until and
    label (volumes: label only, as in docker)."""
    from engine.supervisor.container_service import ContainerService

    containers_match = container_filter(filters)
    image_match = image_filter(filters)
    network_match = network_filter(filters)
    result: dict[str, Any] = {"ContainersDeleted": [], "NetworksDeleted": [], "VolumesDeleted": [],
                              "ImagesDeleted": [], "SpaceReclaimed": 0}
    result["ContainersDeleted"] = await ContainerService(app).prune(containers_match)
    network = app.services.network
    if network is not None:
        removed = await network.store.prune(network_match)
        for name in removed:
            app.events.emit("network", "destroy", name, name=name, driver="bridge")
        result["NetworksDeleted"] = removed
    if volumes and app.services.volumes is not None:
        volume_filters = {k: v for k, v in filters.items() if k in ("label", "label!")}
        from engine.api.volumes import volume_filter

        names, freed = await app.services.volumes.prune(
            all_volumes=False, match=volume_filter(app.services.volumes, volume_filters))
        result["VolumesDeleted"] = names
        result["SpaceReclaimed"] += freed
    images = await prune_images(app, all_images=all_images, match=image_match)
    result["ImagesDeleted"] = images["ImagesDeleted"]
    result["SpaceReclaimed"] += images["SpaceReclaimed"]
    if not any(k.startswith("label") for k in filters):  # the cache's images carry no labels of their own
        cache = await prune_build_cache(app, everything=all_images, until=_until(filters))
        result["CachesDeleted"] = cache["CachesDeleted"]
        result["SpaceReclaimed"] += cache["SpaceReclaimed"]
    return result


# --- the build cache (engine.build.cache) -------------------------------------------------------------


def build_cache_rows(app: App) -> list[dict[str, Any]]:
    """docker's ``BuildCache`` rows of ``system df``: the build cache's images."""
    from engine.build.cache import BuildCache

    if app.services.images is None:
        return []
    cache = BuildCache.of(app.services.images)
    return cache.usage_rows(app.services.require_containers().image_in_use)


async def prune_build_cache(app: App, *, everything: bool = False, until: float | None = None) -> dict[str, Any]:
    """``docker builder prune [-a]``: the build cache's unused images (``everything``: also
    the steps under tagged images)."""
    from engine.build.cache import BuildCache

    if app.services.images is None:
        return {"CachesDeleted": [], "SpaceReclaimed": 0}
    cache = BuildCache.of(app.services.images)
    return await cache.prune(app.services.require_containers().image_in_use, everything=everything, until=until)


def _until(filters: dict[str, list[str]]) -> float | None:
    values = filters.get("until") or []
    return min(parse_until(v) for v in values) if values else None


async def prune_images(app: App, *, all_images: bool, match: Callable[[Image], bool]) -> dict[str, Any]:
    """``image prune [-a] [--filter]``: an image a filter leaves out counts as in use."""
    store = app.services.require_images()
    used = app.services.require_containers().image_in_use
    keep = {image.id for image in store.list() if not match(image)}
    return await store.prune(dangling_only=not all_images,
                             in_use=lambda image_id: image_id in keep or used(image_id))


def prune_summary(result: dict[str, Any]) -> str:
    parts = [f"{len(result.get(k) or [])} {k.removesuffix('Deleted').lower()}"
             for k in ("ContainersDeleted", "NetworksDeleted", "VolumesDeleted", "ImagesDeleted")]
    return ", ".join(parts)
