"""The everyday container verbs: top, stats, changes, export, archive (docker cp both ways),
update, commit. Each calls the ``ContainerVerbs`` method the RPC's ``container.*`` handler
calls (engine.supervisor.container_verbs); only the shapes are docker's here.
"""

from __future__ import annotations

import base64
import contextlib
import json
import stat
import time
from collections.abc import Iterator
from typing import Any

import trio

from engine.actors.state import ContainerState
from engine.dockerapi import messages
from engine.dockerapi.routes.containers import _restart_policy
from engine.dockerapi.server import DockerAPI, Router, json_line, json_response
from engine.dockerapi.shapes import is_empty, refuse_unsupported, rfc3339, rfc3339_nano
from engine.errors import InvalidArgument, NotFound
from engine.httpserver import Request, Response, StreamResponse, Write
from engine.supervisor.container_verbs import ContainerVerbs

UPLOAD_BUFFER = 1024 * 1024  # bytes of a cp upload gathered before they go to disk
STATS_INTERVAL = 1.0  # seconds, as docker's
ONE_SHOT_INTERVAL = 0.1  # seconds: one-shot stats want an answer now, CPU % or not
PATH_STAT_HEADER = "X-Docker-Container-Path-Stat"

# Go's os.FileMode bits (docker's PathStat.Mode is one)
GO_MODE_DIR = 1 << 31
GO_MODE_SYMLINK = 1 << 27
GO_MODE_DEVICE = 1 << 26
GO_MODE_NAMED_PIPE = 1 << 25
GO_MODE_SOCKET = 1 << 24
GO_MODE_SETUID = 1 << 23
GO_MODE_SETGID = 1 << 22
GO_MODE_CHAR_DEVICE = 1 << 21
GO_MODE_STICKY = 1 << 20

UPDATE_HANDLED = {"Memory", "NanoCpus", "PidsLimit", "RestartPolicy", "CpuShares", "CpusetCpus", "CpusetMems",
                  "MemorySwap"}
UPDATE_IGNORED: set[str] = set()


def register(router: Router) -> None:
    router.route("GET", "/containers/{id}/top")(top)
    router.route("GET", "/containers/{id}/stats")(stats)
    router.route("GET", "/containers/{id}/changes")(changes)
    router.route("GET", "/containers/{id}/export")(export)
    router.route("HEAD", "/containers/{id}/archive")(archive_stat)
    router.route("GET", "/containers/{id}/archive")(archive_get)
    router.route("PUT", "/containers/{id}/archive")(archive_put)
    router.route("POST", "/containers/{id}/update")(update)
    router.route("POST", "/commit")(commit)


def verbs(api: DockerAPI) -> ContainerVerbs:
    return ContainerVerbs(api.app)


async def top(api: DockerAPI, req: Request) -> Response:
    actor = verbs(api).get(req.path_params["id"])
    if actor.status.state not in (ContainerState.RUNNING, ContainerState.PAUSED):
        raise messages.not_running(actor.id)
    result = await verbs(api).top(req.path_params["id"], req.param("ps_args").split())
    return json_response({"Titles": result["Titles"], "Processes": result["Processes"]})


# --- stats ------------------------------------------------------------------------------------------


def docker_stats(item: dict[str, Any], read: float, preread: float) -> dict[str, Any]:
    """An engine stats item (engine.supervisor.stats.stats_item) in docker's shape. The
    engine's memory usage leaves the inactive file cache out; docker's clients take it out
    themselves (``inactive_file``), so the usage here has it in. ``preread`` 0: no previous
    sample (one-shot), so precpu_stats are zeros, as docker's."""
    cache = int(item["MemoryCache"])

    def cpu(total: int, system: int) -> dict[str, Any]:
        return {
            "cpu_usage": {"total_usage": total, "usage_in_kernelmode": 0, "usage_in_usermode": 0},
            "system_cpu_usage": system,
            "online_cpus": int(item["OnlineCPUs"]) if total else 0,
            "throttling_data": {"periods": 0, "throttled_periods": 0, "throttled_time": 0},
        }

    doc: dict[str, Any] = {
        "name": "/" + str(item["Name"]),
        "id": item["Id"],
        "read": rfc3339_nano(read),
        "preread": rfc3339(preread),
        "pids_stats": {"current": int(item["Pids"])} if item["Running"] else {},
        "blkio_stats": {
            "io_service_bytes_recursive": [
                {"major": 0, "minor": 0, "op": "read", "value": int(item["BlockRead"])},
                {"major": 0, "minor": 0, "op": "write", "value": int(item["BlockWrite"])},
            ] if item["Running"] else None,
            "io_serviced_recursive": None, "io_queue_recursive": None, "io_service_time_recursive": None,
            "io_wait_time_recursive": None, "io_merged_recursive": None, "io_time_recursive": None,
            "sectors_recursive": None,
        },
        "num_procs": 0,
        "storage_stats": {},
        "cpu_stats": cpu(int(item["CPUUsage"]), int(item["SystemUsage"])) if item["Running"] else cpu(0, 0),
        "precpu_stats": cpu(int(item["PreCPUUsage"]), int(item["PreSystemUsage"]))
        if item["Running"] and preread else cpu(0, 0),
        "memory_stats": {
            "usage": int(item["MemoryUsage"]) + cache,
            "limit": int(item["MemoryLimit"]),
            "stats": {"inactive_file": cache, "total_inactive_file": cache},
        } if item["Running"] else {},
    }
    if item["Running"]:
        doc["networks"] = {"eth0": {
            "rx_bytes": int(item["NetRx"]), "rx_packets": 0, "rx_errors": 0, "rx_dropped": 0,
            "tx_bytes": int(item["NetTx"]), "tx_packets": 0, "tx_errors": 0, "tx_dropped": 0,
        }}
    return doc


async def stats(api: DockerAPI, req: Request) -> StreamResponse:
    """``stream`` (default true): one object a second; false: one, after two samples a
    second apart (CPU % needs both); ``one-shot`` with stream=false: one right away."""
    stream = req.bool_param("stream", True)
    one_shot = req.bool_param("one-shot") and not stream
    service = verbs(api)
    actor = service.get(req.path_params["id"])  # 404 before the stream starts

    async def produce(write: Write) -> None:
        previous = time.time()
        async for items in service.stats([actor.id], stream=stream,
                                         interval=ONE_SHOT_INTERVAL if one_shot else STATS_INTERVAL):
            now = time.time()
            await write(json_line(docker_stats(items[0], now, 0.0 if one_shot else previous)))
            previous = now

    return StreamResponse(produce, eager_headers=stream)


# --- changes, export, archive ----------------------------------------------------------------------


async def changes(api: DockerAPI, req: Request) -> Response:
    return json_response(await verbs(api).diff(req.path_params["id"]))


async def export(api: DockerAPI, req: Request) -> StreamResponse:
    service = verbs(api)
    actor = service.get(req.path_params["id"])

    async def produce(write: Write) -> None:
        await service.export(actor.id, write)

    return StreamResponse(produce, content_type="application/x-tar")


def go_file_mode(mode: int) -> int:
    """A unix st_mode as Go's os.FileMode (what docker's clients decode)."""
    value = mode & 0o777
    kinds = {stat.S_IFDIR: GO_MODE_DIR, stat.S_IFLNK: GO_MODE_SYMLINK, stat.S_IFIFO: GO_MODE_NAMED_PIPE,
             stat.S_IFSOCK: GO_MODE_SOCKET, stat.S_IFBLK: GO_MODE_DEVICE,
             stat.S_IFCHR: GO_MODE_DEVICE | GO_MODE_CHAR_DEVICE}
    value |= kinds.get(stat.S_IFMT(mode), 0)
    for bit, go_bit in ((stat.S_ISUID, GO_MODE_SETUID), (stat.S_ISGID, GO_MODE_SETGID),
                        (stat.S_ISVTX, GO_MODE_STICKY)):
        if mode & bit:
            value |= go_bit
    return value


def path_stat_header(info: dict[str, Any]) -> tuple[str, str]:
    doc = {"name": info["name"], "size": int(info["size"]), "mode": go_file_mode(int(info["mode"])),
           "mtime": rfc3339_nano(float(info["mtime"])), "linkTarget": info.get("link_target") or ""}
    return PATH_STAT_HEADER, base64.b64encode(json.dumps(doc).encode()).decode()


def archive_path(req: Request) -> str:
    path = req.param("path")
    if not path:
        raise InvalidArgument("path is required: the path in the container")
    return path


def follows_link(path: str) -> bool:
    """dockerd resolves a path that ends in ``/`` (or ``/.``) whole: a symlink to a
    directory there is the directory (``docker cp CTR:/link/ dest``), not the link."""
    return path.endswith("/") or path.endswith("/.")


@contextlib.contextmanager
def could_not_find(path: str, container: str) -> Iterator[None]:
    """A missing path in dockerd's words (what `docker cp CTR:/nosuch .` prints)."""
    try:
        yield
    except NotFound as e:
        if not (str(e).startswith("no such file or directory in the container") or "missing_path" in e.details):
            raise
        raise NotFound(f"Could not find the file {path} in container {container}", **e.details) from None


async def archive_stat(api: DockerAPI, req: Request) -> Response:
    path = archive_path(req)
    with could_not_find(path, req.path_params["id"]):
        info = await verbs(api).stat_path(req.path_params["id"], path, follow_link=follows_link(path))
    return Response(200, b"", content_type="", headers=[path_stat_header(info)])


async def archive_get(api: DockerAPI, req: Request) -> StreamResponse:
    """A tar of the path (docker cp out of a container); a missing path is a 404 before any
    of the archive is sent."""
    service = verbs(api)
    actor = service.get(req.path_params["id"])
    path = archive_path(req)
    headers: list[tuple[str, str]] = []  # sent with the first chunk, by then it holds the stat

    async def described(info: dict[str, Any]) -> None:
        headers.append(path_stat_header(info))

    async def produce(write: Write) -> None:
        with could_not_find(path, req.path_params["id"]):
            await service.copy_from(actor.id, path, write, described=described, follow_link=follows_link(path))

    return StreamResponse(produce, content_type="application/x-tar", headers=headers)


async def archive_put(api: DockerAPI, req: Request) -> Response:
    """Extract the tar in the body into the path (docker cp into a container): the body
    goes to an upload file first (a slow client never holds the container), then
    ``copy_to`` extracts it, as the RPC's container.copy_to."""
    service = verbs(api)
    actor = service.get(req.path_params["id"])
    path = archive_path(req)
    copy_uid_gid = req.bool_param("copyUIDGID")
    store = service.uploads()
    token = await trio.to_thread.run_sync(store.begin)
    try:
        buffered = bytearray()
        async for chunk in req.body_chunks():
            buffered += chunk
            if len(buffered) >= UPLOAD_BUFFER:
                await trio.to_thread.run_sync(store.append, token, bytes(buffered))
                buffered.clear()
        if buffered:
            await trio.to_thread.run_sync(store.append, token, bytes(buffered))
    except BaseException:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(store.discard, token)
        raise
    try:
        # dockerd extracts into an existing directory only: the CLI renames entries itself
        await service.copy_to(actor.id, path, token, copy_uid_gid=copy_uid_gid, into_dir_only=True)
    except NotFound as e:
        if "missing_path" not in e.details:
            raise
        raise NotFound(f"Could not find the file {path} in container {req.path_params['id']}") from None
    return Response(200, b"", content_type="")


# --- update, commit ---------------------------------------------------------------------------------


async def update(api: DockerAPI, req: Request) -> Response:
    doc = await req.json_object()
    refuse_unsupported("update", doc, UPDATE_HANDLED, UPDATE_IGNORED)
    nano_cpus = int(doc.get("NanoCpus") or 0)
    restart = doc.get("RestartPolicy")
    pids = doc.get("PidsLimit")
    result = await verbs(api).update(
        req.path_params["id"],
        memory=int(doc.get("Memory") or 0) or None,
        cpus=nano_cpus / 1e9 if nano_cpus else None,
        pids_limit=int(pids) if pids is not None else None,
        restart=_restart_policy(restart) if restart and restart.get("Name") else None,
        cpu_shares=int(doc.get("CpuShares") or 0) or None,
        cpuset_cpus=str(doc.get("CpusetCpus") or "") or None,
        cpuset_mems=str(doc.get("CpusetMems") or "") or None,
        memory_swap=int(doc.get("MemorySwap") or 0) or None,  # 0: unchanged, as dockerd reads it
    )
    return json_response({"Warnings": result.get("Warnings") or []})


async def commit(api: DockerAPI, req: Request) -> Response:
    """docker commit: ``container``, ``repo``/``tag``, ``comment``, ``author``, ``pause``,
    ``changes`` (Dockerfile instructions, one per line or repeated). A config in the body
    is refused unless empty: give its settings as changes."""
    config = await req.json()
    if config is not None and not is_empty(config):
        raise InvalidArgument("a config in the commit body is not supported by engine: give the settings "
                              "as changes (e.g. --change 'CMD [\"sh\"]')")
    container = req.param("container")
    if not container:
        raise InvalidArgument("container is required: the container to commit")
    repo, tag = req.param("repo"), req.param("tag")
    reference = f"{repo}:{tag or 'latest'}" if repo else ""
    instructions = [line for value in req.query.get("changes", []) for line in value.splitlines() if line.strip()]
    image = await verbs(api).commit(container, reference=reference, message=req.param("comment"),
                                    author=req.param("author"), changes=instructions,
                                    pause=req.bool_param("pause", True))
    return json_response({"Id": image.id}, 201)
