"""/_ping, /version, /info, /events, /auth."""

from __future__ import annotations

import contextlib
import os
import platform
import socket
import time
from collections.abc import Callable

import trio

import engine
from engine.actors.events import Event
from engine.api.images import registry_client, registry_host
from engine.api.system import event_filter
from engine.dockerapi.server import (
    MAX_API_VERSION,
    MIN_API_VERSION,
    DockerAPI,
    Router,
    json_line,
    json_response,
    version_text,
)
from engine.dockerapi.shapes import docker_event, parse_filters, parse_timestamp, rfc3339
from engine.errors import EngineError, InvalidArgument, PermissionDenied
from engine.httpserver import Request, Response, StreamResponse, Write
from engine.images.types import host_architecture

# docker's event filter keys the engine's bus can answer; others are refused by name
EVENT_FILTERS = {"type", "event", "container", "image", "network", "volume", "label"}


def register(router: Router) -> None:
    router.route("GET", "/_ping")(ping)
    router.route("GET", "/version")(version)
    router.route("GET", "/info")(info)
    router.route("GET", "/events")(events)
    router.route("POST", "/auth")(auth)
    router.route("GET", "/system/df")(disk_usage)


async def ping(api: DockerAPI, req: Request) -> Response:
    return Response(200, b"OK", content_type="text/plain; charset=utf-8",
                    headers=[("Cache-Control", "no-cache, no-store, must-revalidate"), ("Pragma", "no-cache")])


def _kernel() -> str:
    return platform.release()


async def version(api: DockerAPI, req: Request) -> Response:
    details = {
        "ApiVersion": version_text(MAX_API_VERSION),
        "MinAPIVersion": version_text(MIN_API_VERSION),
        "Os": "linux",
        "Arch": host_architecture(),
        "KernelVersion": _kernel(),
        "GitCommit": "",
        "GoVersion": f"python{platform.python_version()}",
        "BuildTime": "",
        "Experimental": "false",
    }
    return json_response({
        "Platform": {"Name": "engine"},
        "Components": [{"Name": "Engine", "Version": engine.__version__, "Details": details}],
        "Version": engine.__version__,
        **{k: v for k, v in details.items() if k != "Experimental"},
        "Experimental": False,  # a bool here, a string among the component's details
    })


def _mem_total() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def _os_name() -> str:
    try:
        with open("/etc/os-release") as f:
            for line in f:
                if line.startswith("PRETTY_NAME="):
                    return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return "Linux"


async def info(api: DockerAPI, req: Request) -> Response:
    app = api.app
    counts: dict[str, int] = {}
    if app.services.containers is not None:
        counts.update(app.services.containers.counts())
    states: dict[str, int] = {"running": 0, "paused": 0, "stopped": 0}
    if app.services.containers is not None:
        for actor in app.services.containers.all():
            state = actor.status.state.value
            key = state if state in ("running", "paused") else "stopped"
            states[key] += 1
    images = len(app.services.images.list()) if app.services.images is not None else 0
    mem_total, os_name = await trio.to_thread.run_sync(lambda: (_mem_total(), _os_name()))
    runtimes = {name: {"path": name} for name in sorted(app.plugins.register.runtimes)}
    insecure = list(app.config.insecure_registries)
    return json_response({
        "ID": "",
        "Containers": sum(states.values()),
        "ContainersRunning": states["running"],
        "ContainersPaused": states["paused"],
        "ContainersStopped": states["stopped"],
        "Images": images,
        "Driver": app.config.storage_driver,
        "DriverStatus": [["Backing Filesystem", "overlay"]],
        "Plugins": {"Volume": [], "Network": ["bridge", "null"], "Authorization": None,
                    "Log": ["json-file"]},
        "MemoryLimit": True,
        "SwapLimit": False,
        "CpuCfsPeriod": True,
        "CpuCfsQuota": True,
        "CPUShares": False,
        "CPUSet": False,
        "PidsLimit": True,
        "IPv4Forwarding": True,
        "Debug": app.config.log_level == "debug",
        "NFd": 0,
        "OomKillDisable": False,
        "NGoroutines": 0,
        "SystemTime": rfc3339(time.time()),
        "LoggingDriver": "json-file",  # as HostConfig.LogConfig says (routes.containers)
        "CgroupDriver": "cgroupfs",
        "CgroupVersion": "1",
        "NEventsListener": app.events.subscriber_count,
        "KernelVersion": _kernel(),
        "OperatingSystem": os_name,
        "OSVersion": "",
        "OSType": "linux",
        "Architecture": platform.machine(),
        "IndexServerAddress": "https://index.docker.io/v1/",
        "RegistryConfig": {
            "InsecureRegistryCIDRs": [],
            "IndexConfigs": {host: {"Name": host, "Mirrors": [], "Secure": False, "Official": False}
                             for host in insecure},
            "Mirrors": list(app.config.registry_mirrors),
        },
        "NCPU": os.cpu_count() or 1,
        "MemTotal": mem_total,
        "DockerRootDir": str(app.layout.root),
        "HttpProxy": "",
        "HttpsProxy": "",
        "NoProxy": "",
        "Name": socket.gethostname(),
        "Labels": [],
        "ExperimentalBuild": False,
        "ServerVersion": engine.__version__,
        "Runtimes": runtimes,
        "DefaultRuntime": app.config.default_runtime,
        "Swarm": {"NodeID": "", "NodeAddr": "", "LocalNodeState": "inactive", "ControlAvailable": False,
                  "Error": "", "RemoteManagers": None},
        "LiveRestoreEnabled": True,
        "Isolation": "",
        "InitBinary": "catatonit",
        "ContainerdCommit": {"ID": "", "Expected": ""},
        "RuncCommit": {"ID": "", "Expected": ""},
        "InitCommit": {"ID": "", "Expected": ""},
        "SecurityOptions": ["name=seccomp,profile=builtin"],
        "Warnings": None,
    })


def volume_event_filter(names: list[str], match: Callable[[Event], bool]) -> Callable[[Event], bool]:
    """docker's ``volume=NAME`` event filter (a volume event's id is its name)."""
    if not names:
        return match
    return lambda event: event.type == "volume" and event.id in names and match(event)


async def events(api: DockerAPI, req: Request) -> StreamResponse:
    """Past events from ``since``, then live ones until ``until`` (or the client leaves)."""
    since = parse_timestamp(req.param("since"), "since")
    until = parse_timestamp(req.param("until"), "until")
    filters = parse_filters(req.param("filters"))
    unknown = set(filters) - EVENT_FILTERS
    if unknown:
        raise InvalidArgument(f"invalid filter {', '.join(sorted(unknown))}: the engine filters events by "
                              f"{', '.join(sorted(EVENT_FILTERS))}")
    match = volume_event_filter(filters.pop("volume", []), event_filter(filters))
    bus = api.app.events

    async def produce(write: Write) -> None:
        sub = bus.subscribe(match, since=since)
        try:
            while True:  # history first (queued by subscribe)
                try:
                    event = sub.receive.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
                if event is None or (until is not None and event.time > until):
                    return
                await write(json_line(docker_event(event, api.execs.docker_exec_id)))
            with trio.CancelScope() as scope:
                if until is not None:
                    scope.deadline = trio.current_time() + max(0.0, until - time.time())
                async for live in sub.receive:
                    if live is None or (until is not None and live.time > until):
                        return
                    await write(json_line(docker_event(live, api.execs.docker_exec_id)))
        finally:
            bus.unsubscribe(sub)

    return StreamResponse(produce, eager_headers=True)


async def auth(api: DockerAPI, req: Request) -> Response:
    """Check credentials against a registry (docker login); nothing is stored: docker
    clients keep their credentials and send them with each pull and push. Refused
    credentials are a 401 with dockerd's words (the CLI prints them as they are)."""
    doc = await req.json_object()
    username, password = str(doc.get("username") or ""), str(doc.get("password") or "")
    server = registry_host(str(doc.get("serveraddress") or "docker.io"))
    if not username:
        raise InvalidArgument("username is required")
    client = registry_client(api.app, server)
    try:
        await client.check_login(server, username, password)
    except PermissionDenied:
        url = await login_url(client, server)
        return json_response({"message": f"login attempt to {url} failed with status: 401 Unauthorized"}, 401)
    return json_response({"Status": "Login Succeeded", "IdentityToken": ""})


async def login_url(client: object, server: str) -> str:
    """The ``/v2/`` URL the login went to (its scheme as the registry client chose it)."""
    from engine.plugins.registry.client import DistributionClient

    if isinstance(client, DistributionClient):
        with contextlib.suppress(EngineError):
            return (await client.transport.origin(server)).url("/v2/")
    return f"https://{server}/v2/"


# --- system df --------------------------------------------------------------------------------------

DF_TYPES = {"container", "image", "volume", "build-cache"}


async def disk_usage(api: DockerAPI, req: Request) -> Response:
    """docker system df, from what the engine can tell today: images (the store's usage:
    layers shared between images count once; each image's shared part and the containers
    using it), containers (their writable layers' size and with their images'), volumes (each
    one's size and how many containers use it), the build cache's images (engine.build.cache)."""
    from engine.dockerapi.routes.containers import container_summary
    from engine.dockerapi.routes.images import image_summary
    from engine.dockerapi.routes.volumes import disk_usage as volume_usage
    from engine.supervisor.system import container_sizes

    types = set(req.query.get("type", [])) or DF_TYPES
    unknown = types - DF_TYPES
    if unknown:
        raise InvalidArgument(f"invalid type {', '.join(sorted(unknown))}: use container, image, volume or "
                              "build-cache")
    app = api.app
    actors = app.services.containers.all() if app.services.containers is not None else []
    doc: dict[str, object] = {"Volumes": [], "BuildCache": []}
    if "volume" in types and app.services.volumes is not None:
        doc["Volumes"] = await volume_usage(app.services.volumes)
    if "image" in types:
        store = app.services.require_images()
        images = store.list()
        users: dict[str, int] = {}
        for actor in actors:
            users[actor.config.image_id] = users.get(actor.config.image_id, 0) + 1
        layer_images: dict[str, int] = {}
        for image in images:
            for diff_id in set(image.diff_ids):
                layer_images[diff_id] = layer_images.get(diff_id, 0) + 1
        rows = []
        for image in images:
            row = image_summary(image, req)
            row["Containers"] = users.get(image.id, 0)
            row["SharedSize"] = sum(size for diff_id, size in zip(image.diff_ids, image.layer_sizes, strict=False)
                                    if layer_images.get(diff_id, 0) > 1)
            rows.append(row)
        doc["Images"] = rows
        doc["LayersSize"] = int(store.usage()["Size"])
    if "build-cache" in types and app.services.images is not None:
        from engine.supervisor.system import build_cache_rows

        doc["BuildCache"] = build_cache_rows(app)
    if "container" in types:
        sizes = await container_sizes(app, list(actors))
        doc["Containers"] = [{**container_summary(a), "SizeRw": sizes[a.id][0], "SizeRootFs": sizes[a.id][1]}
                             for a in actors]
    return json_response(doc)
