"""Images: list, inspect, history, create (pull, and import with fromSrc), tag, delete, prune,
push, save (get), load.

Pulls and pushes go through the same functions as the RPC's ``image.pull``/``image.push``
(``engine.images.pull``/``push`` with the registry client the plugins chose) and emit the
same events. ``X-Registry-Auth`` credentials are used for that one request only: they get a
client of their own, so no token or password they unlock is cached for anyone else.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import fnmatch
import json
import math
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from engine.actors.state import ContainerState
from engine.api.images import (
    import_image,
    in_use_by_containers,
    list_filter,
    load_images,
    registry_client,
)
from engine.dockerapi import messages
from engine.dockerapi.messages import no_such_image
from engine.dockerapi.server import DockerAPI, Router, json_line, json_response, no_content
from engine.dockerapi.shapes import parse_filters, rfc3339, unix_seconds
from engine.errgroup import unwrap_engine_errors
from engine.errors import Conflict, EngineError, InvalidArgument, NotFound, NotImplementedByEngine
from engine.httpserver import Request, Response, StreamResponse, Write
from engine.images import archive
from engine.images.records import Image, scratch_dir
from engine.images.store import ImageStore
from engine.plugin import RegistryClient, RegistryCredentials
from engine.reference import Reference, parse_reference
from engine.supervisor.containers import settle_removals

ARCHIVE_BUFFER = 1024 * 1024  # bytes of an image archive read or written at a time
MAX_PENDING_BYTE_COUNTS = 64  # progress "Downloading" events queued before some are dropped


def register(router: Router) -> None:
    router.route("GET", "/images/json")(list_images)
    router.route("GET", "/images/get")(save)
    router.route("POST", "/images/load")(load)
    router.route("POST", "/images/create")(create)
    router.route("POST", "/images/prune")(prune)
    router.route("GET", "/images/{name:path}/json")(inspect)
    router.route("GET", "/images/{name:path}/history")(history)
    router.route("POST", "/images/{name:path}/tag")(tag)
    router.route("POST", "/images/{name:path}/push")(push)
    router.route("GET", "/images/{name:path}/get")(save)
    router.route("DELETE", "/images/{name:path}")(delete)


# docker's image Config has every container-config field; an OCI image config holds only
# what was set: the rest is docker's zero value
IMAGE_CONFIG_ZEROS: dict[str, Any] = {
    "Hostname": "", "Domainname": "", "User": "", "AttachStdin": False, "AttachStdout": False,
    "AttachStderr": False, "Tty": False, "OpenStdin": False, "StdinOnce": False, "Env": None, "Cmd": None,
    "Image": "", "Volumes": None, "WorkingDir": "", "Entrypoint": None, "OnBuild": None, "Labels": None,
}


def store_of(api: DockerAPI) -> ImageStore:
    return api.app.services.require_images()


def image_summary(image: Image, req: Request) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "Id": image.id,
        "ParentId": "",
        "RepoTags": image.familiar_tags(),
        "RepoDigests": image.familiar_digests(),
        "Created": unix_seconds(image.created),
        "Size": image.size,
        "SharedSize": -1,
        "Labels": image.config.config.labels or {},
        "Containers": -1,
    }
    if req.api_version < (1, 44):
        doc["VirtualSize"] = image.size
    return doc


async def list_images(api: DockerAPI, req: Request) -> Response:
    store = store_of(api)
    filters = parse_filters(req.param("filters"))
    match = list_filter(store, filters)
    docs = [image_summary(i, req) for i in store.list() if match(i)]
    if filters.get("reference"):
        for doc in docs:
            narrow_to_reference(doc, filters["reference"])
        docs = [doc for doc in docs if doc["RepoTags"] or doc["RepoDigests"]]
    return json_response(docs)


def narrow_to_reference(doc: dict[str, Any], patterns: list[str]) -> None:
    """dockerd lists, of a matching image, only the tags and digests the reference filter
    matches: `docker images my/bb` shows my/bb's rows, not busybox:latest of the same id.
    On familiar names only, as dockerd's FamiliarMatch (docker.io/library/* matches none)."""
    def matches(name: str) -> bool:
        repo = name.split("@", 1)[0]
        if ":" in repo.rsplit("/", 1)[-1]:
            repo = repo.rsplit(":", 1)[0]
        return any(fnmatch.fnmatchcase(name, p) or fnmatch.fnmatchcase(repo, p) for p in patterns)

    doc["RepoTags"] = [t for t in doc["RepoTags"] if matches(t)]
    doc["RepoDigests"] = [d for d in doc["RepoDigests"] if matches(d)]


async def inspect(api: DockerAPI, req: Request) -> Response:
    store = store_of(api)
    name = req.path_params["name"]
    with no_such_image(name):
        image = store.get(name)
        doc = store.inspect(name)
    metadata = doc.get("Metadata") or {}
    doc.update({
        "Parent": "",
        "Comment": "",
        "DockerVersion": "",
        "Container": "",
        "GraphDriver": {"Name": api.app.config.storage_driver, "Data": {}},
        "Metadata": {"LastTagTime": rfc3339(float(metadata.get("LastTagTime") or 0))},
    })
    config = {**IMAGE_CONFIG_ZEROS, **(doc.get("Config") or {})}
    doc["Config"] = config
    if req.api_version < (1, 45):  # dropped from the API in 1.45
        doc["ContainerConfig"] = {**IMAGE_CONFIG_ZEROS, "Env": config.get("Env"), "Cmd": config.get("Cmd")}
    if req.api_version < (1, 44):
        doc["VirtualSize"] = image.size
    return json_response(doc)


async def history(api: DockerAPI, req: Request) -> Response:
    with no_such_image(req.path_params["name"]):
        rows = store_of(api).history(req.path_params["name"])
    return json_response([{**row, "Created": unix_seconds(row.get("Created"))} for row in rows])


async def tag(api: DockerAPI, req: Request) -> Response:
    repo = req.param("repo")
    if not repo:
        raise InvalidArgument("repo is required: the name to give the image")
    tag_ = req.param("tag") or "latest"
    target = f"{repo}:{tag_}"
    with no_such_image(req.path_params["name"]):
        image = await store_of(api).tag(req.path_params["name"], target)
    api.app.events.emit("image", "tag", image.id, name=target)
    return no_content(201)


async def delete(api: DockerAPI, req: Request) -> Response:
    name = req.path_params["name"]
    store = store_of(api)
    force = req.bool_param("force")
    with no_such_image(name):
        await settle_removals(api.app)
        image, ref = store.resolve(name)
    if ref is None:  # by ID: dockerd's refusals, and no force past a running container
        refuse_delete_by_id(api, image, force)
    try:
        with no_such_image(name):
            report = await store.remove(name, force=force, in_use=in_use_by_containers(api.app))
    except Conflict:
        image = store.get(name)
        users = [a.id for a in api.app.services.require_containers().all() if a.config.image_id == image.id]
        if not users:
            raise
        raise messages.image_in_use(name, users[0], image.id) from None
    api.app.events.emit("image", "delete", name)
    return json_response(report)


def refuse_delete_by_id(api: DockerAPI, image: Image, force: bool) -> None:
    """dockerd's checks of ``rmi ID``: a running container's image cannot be deleted even
    with force (engine's store would untag it); a stopped one's, or one named in several
    repositories, needs force. In its words."""
    short = image.id.removeprefix("sha256:")[:12]
    users = [a for a in api.app.services.require_containers().all() if a.config.image_id == image.id]
    running = [a for a in users if a.status.state in (ContainerState.RUNNING, ContainerState.PAUSED,
                                                      ContainerState.RESTARTING)]
    if running:
        raise Conflict(f"conflict: unable to delete {short} (cannot be forced) - image is being used by "
                       f"running container {running[0].id[:12]}")
    if force:
        return
    repositories = {str(parse_reference(t).repository()) for t in image.repo_tags}
    if len(repositories) > 1:
        raise Conflict(f"conflict: unable to delete {short} (must be forced) - image is referenced in "
                       "multiple repositories")
    if users:
        raise Conflict(f"conflict: unable to delete {short} (must be forced) - image is being used by "
                       f"stopped container {users[0].id[:12]}")


async def prune(api: DockerAPI, req: Request) -> Response:
    from engine.supervisor.system import image_filter

    filters = parse_filters(req.param("filters"))
    match = image_filter(filters)  # until (a duration too), label, label!, dangling
    dangling = filters.get("dangling", ["true"])[-1].lower() not in ("false", "0")
    await settle_removals(api.app)
    store = store_of(api)
    by_id = {image.id: image for image in store.list()}
    used = in_use_by_containers(api.app)

    def kept(image_id: str) -> bool:  # the store's prune skips what is "in use"
        image = by_id.get(image_id)
        return used(image_id) or image is None or not match(image)

    result = await store.prune(dangling_only=dangling, in_use=kept)
    return json_response({"ImagesDeleted": result["ImagesDeleted"] or None,
                          "SpaceReclaimed": result["SpaceReclaimed"]})


# --- registry credentials from X-Registry-Auth ---------------------------------------------------


def request_credentials(req: Request) -> RegistryCredentials | None:
    """docker's ``X-Registry-Auth``: base64url JSON (username/password, or ``auth`` as
    ``user:pass`` in base64); None when it carries no credentials."""
    header = req.headers.get("x-registry-auth", "").strip()
    if not header:
        return None
    try:
        raw = base64.urlsafe_b64decode(header + "=" * (-len(header) % 4))
        doc = json.loads(raw) if raw.strip() else {}
    except (ValueError, binascii.Error):
        try:
            doc = json.loads(base64.b64decode(header + "=" * (-len(header) % 4)))
        except (ValueError, binascii.Error):
            raise InvalidArgument("invalid X-Registry-Auth header: expected base64 JSON") from None
    if not isinstance(doc, dict):
        raise InvalidArgument("invalid X-Registry-Auth header: expected a JSON object")
    username, password = str(doc.get("username") or ""), str(doc.get("password") or "")
    if not username and doc.get("auth"):
        try:
            username, _, password = base64.b64decode(str(doc["auth"])).decode().partition(":")
        except (ValueError, binascii.Error):
            raise InvalidArgument("invalid X-Registry-Auth header: auth is not base64 user:password") from None
    if doc.get("identitytoken"):
        username, password = "<token>", str(doc["identitytoken"])
    return RegistryCredentials(username, password) if username else None


@contextlib.asynccontextmanager
async def client_for(api: DockerAPI, ref: Reference, creds: RegistryCredentials | None) -> AsyncIterator[RegistryClient]:
    """The registry client for ``ref``; with request credentials and the built-in client,
    a fresh one that knows only them (closed afterwards)."""
    from engine.plugins.registry.client import DistributionClient
    from engine.plugins.registry.plugin import build_client

    client = registry_client(api.app, ref.domain)
    if creds is None or not isinstance(client, DistributionClient):
        yield client
        return

    async def only_these(_host: str) -> RegistryCredentials | None:
        return creds

    own = build_client(api.app.config.to_plugin_dict(), only_these)
    try:
        yield own
    finally:
        with trio.CancelScope(shield=True):
            await own.aclose()


# --- progress in docker's JSON stream -------------------------------------------------------------


def _human(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.3g}{unit}" if unit != "B" else f"{int(n)}B"
        n /= 1000
    return f"{n}B"


def progress_message(event: dict[str, Any]) -> dict[str, Any]:
    """An engine progress event (``id``, ``status``, ``current``, ``total``) as docker's
    JSONMessage."""
    doc: dict[str, Any] = {"status": event.get("status", "")}
    if "id" in event:
        doc["id"] = event["id"]
    current, total = event.get("current"), event.get("total")
    if current is not None:
        detail: dict[str, Any] = {"current": current}
        if total:
            detail["total"] = total
            width = 50
            filled = min(width, int(width * current / total))
            bar = "=" * filled + (">" if filled < width else "") + " " * max(0, width - filled - 1)
            doc["progress"] = f"[{bar}] {_human(current):>8}/{_human(total)}"
        doc["progressDetail"] = detail
    else:
        doc["progressDetail"] = {}
    return doc


def error_message(error: BaseException) -> dict[str, Any]:
    from engine.dockerapi.server import docker_message

    text = docker_message(error)
    return {"errorDetail": {"message": text}, "error": text}


async def run_with_progress(write: Write, job: Callable[[Callable[[dict[str, Any]], None]], Awaitable[Any]]) -> Any:
    """Run ``job(progress)`` while its progress events go out as JSON lines. Byte counts are
    dropped when the client falls behind; state changes never are."""
    send, receive = trio.open_memory_channel[dict[str, Any]](math.inf)
    pending = [0]
    result: list[Any] = []

    def progress(event: dict[str, Any]) -> None:
        if "current" in event and pending[0] >= MAX_PENDING_BYTE_COUNTS:
            return
        pending[0] += 1
        send.send_nowait(event)

    async def run_job() -> None:
        with send:
            result.append(await job(progress))

    with unwrap_engine_errors():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_job)
            async for event in receive:
                pending[0] -= 1
                await write(json_line(progress_message(event)))
    return result[0]


# --- create (pull) and push --------------------------------------------------------------------------


def pull_reference(from_image: str, tag_: str) -> Reference:
    if tag_:
        from_image = f"{from_image}@{tag_}" if ":" in tag_ and tag_.startswith("sha256:") else f"{from_image}:{tag_}"
    return parse_reference(from_image)


async def create(api: DockerAPI, req: Request) -> StreamResponse:
    if req.param("fromSrc"):
        return await import_from_body(api, req)
    from_image = req.param("fromImage")
    if not from_image:
        raise InvalidArgument("fromImage is required (or fromSrc to import)")
    ref = pull_reference(from_image, req.param("tag"))
    platform = req.param("platform")
    creds = request_credentials(req)
    store = store_of(api)

    async def produce(write: Write) -> None:
        from engine.images.pull import pull

        try:
            before = store.get(str(ref)).id
        except EngineError:
            before = None
        # dockerd says "Pulling from" once the manifest is found: an error before that is
        # the response's own status and message (docker-py raises it from images.pull)
        opened = False

        async def open_stream() -> None:
            nonlocal opened
            if not opened:
                opened = True
                await write(json_line({"status": f"Pulling from {ref.path}", "id": ref.tag or ref.digest or "latest"}))

        async def write_opened(data: bytes) -> None:
            await open_stream()
            await write(data)

        try:
            async with client_for(api, ref, creds) as client:
                image = await run_with_progress(write_opened, lambda progress: pull(
                    client, store, ref, platform=platform or None, progress=progress))
        except EngineError as e:
            error = pull_error(ref, e)
            if not opened:
                raise error from None
            await write(json_line(error_message(error)))
            return
        await open_stream()
        api.app.events.emit("image", "pull", image.id, name=str(ref))
        digest = image.index_digest or image.manifest_digest
        await write(json_line({"status": f"Digest: {digest}"}))
        word = "Image is up to date for" if before == image.id else "Downloaded newer image for"
        await write(json_line({"status": f"Status: {word} {ref.familiar()}"}))

    return StreamResponse(produce)


def docker_login_hint(error: EngineError) -> EngineError:
    """The engine's hint names ``engctl login``; a docker client logs in with docker."""
    text = str(error)
    if "engctl login" not in text:
        return error
    return type(error)(text.replace("engctl login", "docker login"), **error.details)


def pull_error(ref: Reference, error: EngineError) -> EngineError:
    """A failed pull as dockerd words it where clients look at the words (a missing tag or
    repository is docker's "manifest for … not found")."""
    if isinstance(error, NotFound):
        return NotFound(f"manifest for {ref.familiar()} not found: manifest unknown: manifest unknown",
                        **error.details)
    return docker_login_hint(error)


async def push(api: DockerAPI, req: Request) -> StreamResponse:
    from engine.images.push import push as do_push

    name = req.path_params["name"]
    tag_ = req.param("tag")
    ref = parse_reference(f"{name}:{tag_}" if tag_ else name)
    if ref.digest is not None:
        raise InvalidArgument(f"cannot push to a digest reference {ref}: push to a tag")
    creds = request_credentials(req)
    store = store_of(api)
    with no_such_image(name):
        store.get(str(ref))  # 404 before the stream starts

    async def produce(write: Write) -> None:
        await write(json_line({"status": f"The push refers to repository [{ref.name}]"}))
        sizes: dict[str, int] = {}

        def remember(progress: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
            def inner(event: dict[str, Any]) -> None:
                if event.get("status") == "Pushed manifest":
                    sizes["size"] = int(event.get("size") or 0)
                    return
                progress(event)
            return inner

        try:
            async with client_for(api, ref, creds) as client:
                digest = await run_with_progress(write, lambda progress: do_push(
                    client, store, ref, progress=remember(progress)))
        except EngineError as e:
            await write(json_line(error_message(docker_login_hint(e))))
            return
        api.app.events.emit("image", "push", digest, name=str(ref))
        shown_tag = ref.tag or "latest"
        size = sizes.get("size", 0)
        await write(json_line({"status": f"{shown_tag}: digest: {digest} size: {size}"}))
        await write(json_line({"progressDetail": {}, "aux": {"Tag": shown_tag, "Digest": digest, "Size": size}}))

    return StreamResponse(produce)


# --- save, load, import (archives through the request and response bodies) ---------------------------


@contextlib.asynccontextmanager
async def scratch(api: DockerAPI) -> AsyncIterator[Path]:
    """A private directory for an archive on its way in or out, removed afterwards."""
    directory = await trio.to_thread.run_sync(scratch_dir, api.app.layout.images_dir)
    try:
        yield directory
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(shutil.rmtree, directory, True)


async def receive_body(req: Request, path: Path) -> int:
    """The request body into ``path`` (any size; written in worker threads)."""
    size = 0
    with await trio.to_thread.run_sync(open, path, "wb") as out:
        buffered = bytearray()
        async for chunk in req.body_chunks():
            buffered += chunk
            size += len(chunk)
            if len(buffered) >= ARCHIVE_BUFFER:
                await trio.to_thread.run_sync(out.write, bytes(buffered))
                buffered.clear()
        if buffered:
            await trio.to_thread.run_sync(out.write, bytes(buffered))
    return size


async def save(api: DockerAPI, req: Request) -> StreamResponse:
    """docker save: a docker-archive tar of the images named (``names``, repeated, or the
    one in the path); written by the same code as the RPC's image.save, then streamed."""
    names = [req.path_params["name"]] if "name" in req.path_params else req.query.get("names", [])
    if not names:
        raise InvalidArgument("names is required: the images to save")
    store = store_of(api)
    for name in names:
        with no_such_image(name):
            store.resolve(name)  # 404 before the stream starts

    async def produce(write: Write) -> None:
        async with scratch(api) as directory:
            path = directory / "save.tar"
            await archive.save(store, list(names), path, "docker-archive")
            with await trio.to_thread.run_sync(open, path, "rb") as source:
                while chunk := await trio.to_thread.run_sync(source.read, ARCHIVE_BUFFER):
                    await write(chunk)

    return StreamResponse(produce, content_type="application/x-tar")


async def load(api: DockerAPI, req: Request) -> Response:
    """docker load: a docker-archive (or OCI layout) tar in the body."""
    quiet = req.bool_param("quiet")
    async with scratch(api) as directory:
        path = directory / "load.tar"
        if not await receive_body(req, path):
            raise InvalidArgument("the request body is empty: send the image archive")
        loaded = await load_images(api.app, path)
    lines = []
    for image in loaded:
        tags = image.familiar_tags()
        texts = [f"Loaded image: {tag}" for tag in tags] or [f"Loaded image ID: {image.id}"]
        lines += [json_line({"stream": text + "\n"}) for text in texts]
    body = b"" if quiet and not lines else b"".join(lines)
    return Response(200, body, content_type="application/json")


async def import_from_body(api: DockerAPI, req: Request) -> StreamResponse:
    """docker import: ``fromSrc=-`` with a root filesystem tar in the body; ``repo`` (which
    may hold the tag), ``tag``, ``message``, ``changes`` (repeated)."""
    if req.param("fromSrc") != "-":
        raise NotImplementedByEngine("importing from a URL is not supported by engine: send the archive "
                                     "in the body (fromSrc=-)")
    repo, tag_ = req.param("repo"), req.param("tag")
    reference = f"{repo}:{tag_}" if repo and tag_ else repo
    if reference:
        parse_reference(reference)  # a bad name fails before the upload
    changes = [line for value in req.query.get("changes", []) for line in value.splitlines() if line.strip()]
    message = req.param("message")
    async with scratch(api) as directory:
        path = directory / "import.tar"
        await receive_body(req, path)
        image = await import_image(api.app, path, reference, changes=changes, message=message)

    async def produce(write: Write) -> None:
        await write(json_line({"status": image.id}))

    return StreamResponse(produce)
