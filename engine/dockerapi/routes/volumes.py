"""Volumes: list, create, inspect, remove, prune.

The same VolumeService calls, filters and views as the RPC's ``volume.*`` handlers
(``engine.api.volumes``), in docker's HTTP spellings: 201 on create, 204 on remove, 409 for a
volume in use, ``filters`` as JSON in the query."""

from __future__ import annotations

from typing import Any

from engine.api.volumes import view as engine_view
from engine.api.volumes import volume_filter
from engine.dockerapi import messages
from engine.dockerapi.server import DockerAPI, Router, json_response, no_content
from engine.dockerapi.shapes import parse_filters, refuse_unsupported, str_map
from engine.errors import InvalidArgument, Unavailable
from engine.httpserver import Request, Response
from engine.supervisor.containers import settle_removals
from engine.supervisor.volumes import VolumeService

CREATE_HANDLED = {"Name", "Driver", "DriverOpts", "Labels"}
CREATE_IGNORED = {"ClusterVolumeSpec"}
PRUNE_FILTERS = {"label", "label!", "all"}


def register(router: Router) -> None:
    router.route("GET", "/volumes")(list_volumes)
    router.route("POST", "/volumes/create")(create)
    router.route("POST", "/volumes/prune")(prune)
    router.route("GET", "/volumes/{name}")(inspect)
    router.route("DELETE", "/volumes/{name}")(remove)


def view(service: VolumeService, record: Any, *usage: Any) -> dict[str, Any]:
    """The engine's volume view with dockerd's null for no labels and no options
    (`volume inspect -f '{{json .Labels}}'` prints null there)."""
    doc: dict[str, Any] = engine_view(service, record, *usage)
    for key in ("Labels", "Options"):
        if key in doc and not doc[key]:
            doc[key] = None
    return doc


def volumes(api: DockerAPI) -> VolumeService:
    service = api.app.services.volumes
    if service is None:
        raise Unavailable("volumes are not available yet (the daemon is starting); retry")
    return service


async def list_volumes(api: DockerAPI, req: Request) -> Response:
    service = volumes(api)
    # the anonymous volumes of a `run --rm` that answered a moment ago are gone, as dockerd's
    await settle_removals(api.app)
    match = volume_filter(service, parse_filters(req.param("filters")))
    found = [view(service, record) for record in service.store.list() if match(record)]
    warnings = [f"volume {n} is broken: {why}" for n, why in sorted(service.store.broken.items())]
    return json_response({"Volumes": found, "Warnings": warnings or None})


async def create(api: DockerAPI, req: Request) -> Response:
    doc = await req.json_object()
    refuse_unsupported("volume create", doc, CREATE_HANDLED, CREATE_IGNORED)
    service = volumes(api)
    # an existing volume of that name comes back as it is (docker's create is idempotent)
    record = await service.store.create(str(doc.get("Name") or ""), driver=str(doc.get("Driver") or "local"),
                                        options=str_map(doc.get("DriverOpts"), "DriverOpts"),
                                        labels=str_map(doc.get("Labels"), "Labels"))
    return json_response(view(service, record), 201)


async def inspect(api: DockerAPI, req: Request) -> Response:
    service = volumes(api)
    name = req.path_params["name"]
    if service.store.find(name) is None:
        raise messages.no_such_volume(name)
    return json_response(view(service, service.store.get(name)))


async def remove(api: DockerAPI, req: Request) -> Response:
    """Refused (409) while any container names the volume; ``force`` only makes a missing
    volume no error, as in docker."""
    service = volumes(api)
    name = req.path_params["name"]
    if req.bool_param("force") and service.store.find(name) is None:
        return no_content()
    if service.store.find(name) is None:
        raise messages.no_such_volume(name)
    await settle_removals(api.app)
    users = service.users(name)
    if users:
        ids = [a.id for a in api.app.services.require_containers().all() if a.name in users]
        raise messages.volume_in_use(name, ids)
    await service.store.remove(name, users=users)
    return no_content()


async def prune(api: DockerAPI, req: Request) -> Response:
    """Unused anonymous volumes, or every unused one with the ``all`` filter (API 1.42+)."""
    service = volumes(api)
    filters = parse_filters(req.param("filters"))
    unknown = set(filters) - PRUNE_FILTERS
    if unknown:
        raise InvalidArgument(f"invalid filter {', '.join(sorted(unknown))}: volume prune takes "
                              f"{', '.join(sorted(PRUNE_FILTERS))}")
    all_volumes = filters.pop("all", ["false"])[-1].lower() in ("true", "1")
    if req.api_version < (1, 42):  # before 1.42 prune took every unused volume
        all_volumes = True
    await settle_removals(api.app)
    removed, freed = await service.prune(all_volumes=all_volumes, match=volume_filter(service, filters))
    return json_response({"VolumesDeleted": removed or None, "SpaceReclaimed": freed})


async def disk_usage(service: VolumeService) -> list[dict[str, Any]]:
    """docker system df's volumes: each with its size and how many containers use it."""
    rows = []
    for record in service.store.list():
        usage = await service.store.usage(record)
        rows.append(view(service, record, usage))
    return rows
