"""``POST /build``: dockerd's classic builder (what ``docker build`` without BuildKit,
docker-compose's ``build:`` and docker-py's ``images.build`` call).

The body is the build context as a tar (maybe compressed), unpacked safely into a private
directory (engine.build.context); the query holds the options. The answer is dockerd's
JSON-lines stream: ``{"stream": "Step 1/3 : FROM busybox\\n"}``…, ``{"aux": {"ID": …}}``,
and a failed step as ``{"errorDetail": {…}, "error": …}``. An error found before the first
line (a Dockerfile that does not parse, a hostile context) is an HTTP error instead, as
dockerd's.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import trio

from engine.build.builder import Builder, BuildOptions, StepFailed
from engine.build.context import extract_context
from engine.dockerapi.routes.images import receive_body
from engine.dockerapi.server import DockerAPI, Router, docker_message, json_line, json_response
from engine.dockerapi.shapes import parse_filters
from engine.errors import EngineError, InvalidArgument, NotImplementedByEngine
from engine.httpserver import Request, Response, StreamResponse, Write
from engine.images.records import scratch_dir


def register(router: Router) -> None:
    router.route("POST", "/build")(build)
    router.route("POST", "/build/prune")(prune)


async def prune(api: DockerAPI, req: Request) -> Response:
    """``docker builder prune [-a] [--filter until=…]`` (``docker system prune`` calls it
    too): the build cache's unused images (engine.build.cache); ``all`` also the steps
    under tagged images."""
    from engine.supervisor.system import parse_until, prune_build_cache

    filters = parse_filters(req.param("filters"))
    unknown = sorted(set(filters) - _PRUNE_FILTERS)
    if unknown:
        raise InvalidArgument(f"invalid filter '{unknown[0]}'")
    if set(filters) - {"until", "unused-for"}:
        # dockerd takes these for BuildKit's records; engine's cache images carry no
        # labels, ids or kinds of their own: nothing matches, nothing is removed
        return json_response({"CachesDeleted": [], "SpaceReclaimed": 0})
    times = filters.get("until", []) + filters.get("unused-for", [])
    until = min(parse_until(v) for v in times) if times else None
    result = await prune_build_cache(api.app, everything=req.bool_param("all"), until=until)
    return json_response(result)


# the filters dockerd's /build/prune accepts
_PRUNE_FILTERS = {"until", "unused-for", "label", "label!", "id", "parent", "type", "description", "inuse",
                  "shared", "private"}


def _json_param(req: Request, name: str) -> dict[str, Any]:
    text = req.param(name)
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError as e:
        raise InvalidArgument(f"invalid {name}: not JSON ({e})") from None
    if not isinstance(value, dict):
        raise InvalidArgument(f"invalid {name}: expected a JSON object")
    return value


def build_options(req: Request) -> BuildOptions:
    if req.param("remote"):
        raise NotImplementedByEngine("building from a remote context (a URL or git repository) is not supported "
                                     "by engine: send the context as a tar in the body")
    args = _json_param(req, "buildargs")
    labels = _json_param(req, "labels")
    return BuildOptions(
        tags=[t for t in req.query.get("t", []) if t],
        dockerfile=req.param("dockerfile") or "Dockerfile",
        build_args={str(k): (None if v is None else str(v)) for k, v in args.items()},
        labels={str(k): str(v) for k, v in labels.items()},
        no_cache=req.bool_param("nocache"),
        pull=req.bool_param("pull"),
        quiet=req.bool_param("q"),
        target=req.param("target"),
        network_mode=req.param("networkmode"),
        platform=req.param("platform"),
    )


def build_error(error: BaseException) -> dict[str, Any]:
    text = docker_message(error)
    detail: dict[str, Any] = {"message": text}
    if isinstance(error, StepFailed):
        detail = {"code": error.details.get("code", 1), "message": text}
    return {"errorDetail": detail, "error": text}


async def build(api: DockerAPI, req: Request) -> StreamResponse:
    """The body is read (and the context unpacked) before the answer starts: the server
    reads no more of the request once it streams."""
    options = build_options(req)
    directory = await trio.to_thread.run_sync(scratch_dir, api.app.layout.images_dir)
    try:
        context = await receive_context(req, directory, options.dockerfile)
    except BaseException:
        await _remove(directory)
        raise

    async def produce(write: Write) -> None:
        started = [False]

        async def emit(doc: dict[str, Any]) -> None:
            started[0] = True
            await write(json_line(doc))

        try:
            await Builder(api.app, context, options, emit).build()
        except EngineError as e:
            if not started[0]:
                raise  # nothing sent yet: an HTTP error, as dockerd's
            await write(json_line(build_error(e)))
        finally:
            await _remove(directory)

    return StreamResponse(produce)


async def receive_context(req: Request, directory: Path, dockerfile: str) -> Path:
    archive = directory / "context.tar"
    if not await receive_body(req, archive):
        raise InvalidArgument("the request body is empty: send the build context as a tar")
    context = directory / "context"

    def unpack() -> None:
        context.mkdir()
        with open(archive, "rb") as f:
            extract_context(f, context, dockerfile=dockerfile)
        archive.unlink()

    await trio.to_thread.run_sync(unpack)
    return context


async def _remove(directory: Path) -> None:
    with trio.CancelScope(shield=True):
        await trio.to_thread.run_sync(shutil.rmtree, directory, True)
