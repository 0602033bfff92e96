"""The Docker Engine API front door: listeners, routing, API versions, errors.

Paths are served versioned (``/v1.47/containers/json``) and unversioned (the newest
version). Requests for a version newer than ``MAX_API_VERSION`` or older than
``MIN_API_VERSION`` are refused with 400, as dockerd does; clients negotiate through
``/_ping``'s ``API-Version`` header. Errors are docker's ``{"message": …}`` with the status
that the engine's error code maps to (``STATUS_FOR_CODE``).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import attrs
import h11
import trio

import engine
from engine.errors import ConfigError, EngineError, InvalidArgument, NotFound
from engine.httpserver import (
    BodyTooLarge,
    HijackResponse,
    Reply,
    Request,
    Response,
    StreamResponse,
    serve_connection,
)
from engine.rpc.transports import (
    TLSConfig,
    inherited_listeners,
    open_tcp_listeners,
    parse_host,
    unix_listener,
)
from engine.supervisor.app import App

log = logging.getLogger("engine.dockerapi")

MIN_API_VERSION = (1, 24)
MAX_API_VERSION = (1, 47)

# engine/errors.py codes -> HTTP status (docker's errdefs mapping); anything else is 500.
STATUS_FOR_CODE = {
    "not_found": 404,
    "method_not_found": 404,
    "invalid_argument": 400,
    "config_error": 400,
    "protocol_error": 400,
    "already_exists": 409,
    "conflict": 409,
    "permission_denied": 403,
    "unavailable": 503,
    "not_implemented": 501,
}


def version_text(version: tuple[int, int]) -> str:
    return f"{version[0]}.{version[1]}"


def status_for(error: BaseException) -> int:
    if isinstance(error, BodyTooLarge):
        return BodyTooLarge.http_status
    if isinstance(error, EngineError):
        status = error.details.get("http_status")  # where dockerd answers otherwise than by kind
        return status if isinstance(status, int) else STATUS_FOR_CODE.get(error.code, 500)
    if isinstance(error, h11.RemoteProtocolError):
        return error.error_status_hint
    return 500


def docker_message(error: BaseException) -> str:
    """The message docker clients show after "Error response from daemon: ". docker-py
    and the CLI recognise a missing object by docker's capitalised "No such …"."""
    text = str(error) if isinstance(error, EngineError | h11.RemoteProtocolError) else f"internal error: {error}"
    if text.startswith("no such "):
        text = "N" + text[1:]
    return text


def error_response(error: BaseException, request: Request | None) -> Response:
    if not isinstance(error, EngineError | h11.RemoteProtocolError):
        where = f"{request.method} {request.path}" if request else "a request"
        log.error("internal error answering %s", where, exc_info=error)
    return json_response({"message": docker_message(error)}, status_for(error))


def json_response(doc: Any, status: int = 200) -> Response:
    return Response(status, json.dumps(doc, separators=(",", ":")).encode() + b"\n")


def no_content(status: int = 204) -> Response:
    return Response(status, b"", content_type="")


def json_line(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode() + b"\n"


# --- routing -----------------------------------------------------------------------------------

Handler = Callable[["DockerAPI", Request], Awaitable[Reply]]

_PARAM = re.compile(r"\{(\w+)(:path)?\}")
_VERSIONED = re.compile(r"^/v(\d+)\.(\d+)(/.*)$")


@attrs.frozen
class Route:
    method: str
    pattern: re.Pattern[str]
    handler: Handler


class Router:
    """Routes by method and path; ``{name}`` matches one segment, ``{name:path}`` any
    (image names have slashes: ``/images/127.0.0.1:5000/test/busybox:latest/json``)."""

    def __init__(self) -> None:
        self.routes: list[Route] = []

    def route(self, method: str, template: str) -> Callable[[Handler], Handler]:
        def compile_segment(m: re.Match[str]) -> str:
            return f"(?P<{m.group(1)}>.+)" if m.group(2) else f"(?P<{m.group(1)}>[^/]+)"

        regex = re.compile("^" + _PARAM.sub(compile_segment, template) + "/?$")

        def register(handler: Handler) -> Handler:
            self.routes.append(Route(method, regex, handler))
            return handler

        return register

    def match(self, method: str, path: str) -> tuple[Handler, dict[str, str]]:
        wrong_method = False
        for route in self.routes:
            m = route.pattern.match(path)
            if m is None:
                continue
            if route.method == method or (method == "HEAD" and route.method == "GET"):
                return route.handler, m.groupdict()
            wrong_method = True
        if wrong_method:
            raise NotFound(f"{method} {path}: no such endpoint (the path takes other methods)")
        raise NotFound(f"page not found: {path} is not part of the Docker API")


def split_version(path: str) -> tuple[tuple[int, int], str]:
    """``/v1.41/x`` → ((1, 41), "/x"); unversioned paths get the newest version."""
    m = _VERSIONED.match(path)
    if m is None:
        return MAX_API_VERSION, path
    version = (int(m.group(1)), int(m.group(2)))
    if version > MAX_API_VERSION:
        raise InvalidArgument(
            f"client version {version_text(version)} is too new. Maximum supported API version "
            f"is {version_text(MAX_API_VERSION)}")
    if version < MIN_API_VERSION:
        raise InvalidArgument(
            f"client version {version_text(version)} is too old. Minimum supported API version "
            f"is {version_text(MIN_API_VERSION)}, please upgrade your client to a newer version")
    return version, m.group(3)


# --- the API object handlers get -----------------------------------------------------------------


class DockerAPI:
    """What every route handler gets: the daemon's App (its services) and the Docker API's
    own bookkeeping (exec instances, which docker names before they run)."""

    def __init__(self, app: App) -> None:
        from engine.dockerapi.attach import PendingStarts
        from engine.dockerapi.execs import ExecRegistry, exec_records_dir
        from engine.dockerapi.routes import build_router

        self.app = app
        self.router = build_router()
        self.execs = ExecRegistry(exec_records_dir(app.layout.root), self._find_actor)
        self.pending_starts = PendingStarts()  # attached connections waiting for a start
        self._nursery: trio.Nursery | None = None

    def attach(self, nursery: trio.Nursery) -> None:
        """Where work that outlives its request runs (detached execs)."""
        self._nursery = nursery

    async def start(self, nursery: trio.Nursery) -> None:
        """Before serving: the exec instances an earlier daemon left, and their removal
        with their container from now on (however it is removed)."""
        self.attach(nursery)
        await self.execs.load(nursery)
        self.app.events.observe(self._container_news)

    def _container_news(self, event: Any) -> None:
        if event.type == "container" and event.action == "destroy":
            self.execs.container_removed(event.id)

    def _find_actor(self, container_id: str) -> Any:
        containers = self.app.services.containers
        return containers.actors.get(container_id) if containers is not None else None

    def background(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        if self._nursery is None:
            raise EngineError("the Docker API is not serving yet")

        async def guarded() -> None:
            try:
                await fn(*args)
            except Exception:  # a background job's failure must not take the daemon down
                log.exception("Docker API background job %s failed", getattr(fn, "__name__", fn))

        self._nursery.start_soon(guarded)

    def response_headers(self) -> list[tuple[str, str]]:
        return [
            ("Api-Version", version_text(MAX_API_VERSION)),
            ("Docker-Experimental", "false"),
            ("Ostype", "linux"),
            ("Server", f"engine/{engine.__version__} (linux)"),
        ]

    async def handle(self, request: Request) -> Reply:
        try:
            request.api_version, path = split_version(request.path)
            handler, request.path_params = self.router.match(request.method, path)
            return await handler(self, request)
        except EngineError as e:
            return error_response(e, request)

    async def serve_stream(self, stream: trio.abc.Stream) -> None:
        await serve_connection(stream, self.handle, error_response, self.response_headers)


# --- listeners -----------------------------------------------------------------------------------


async def serve_listeners(api: DockerAPI, listeners: list[Any], *,
                          task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    await trio.serve_listeners(api.serve_stream, listeners, task_status=task_status)


async def listen(app: App, api: DockerAPI, hosts: list[str], nursery: trio.Nursery,
                 *, gid: int | None = None, rpc_uses_fd: bool = False) -> list[Path]:
    """Open every ``--docker-host``; the unix socket paths are returned (to remove at
    shutdown). ``tcp://`` follows the RPC listener's TLS rules: plain only on loopback."""
    await api.start(nursery)
    sockets: list[Path] = []
    for host in hosts:
        kind, address = parse_host(host)
        listeners: list[Any]
        if kind == "unix":
            listeners = [await unix_listener(Path(address), gid=gid)]
            sockets.append(Path(address))
        elif kind == "fd":
            if rpc_uses_fd:
                raise ConfigError("fd:// is given to both --host and --docker-host; inherited "
                                  "sockets can serve only one of them")
            listeners = inherited_listeners()
            if not listeners:
                raise ConfigError("docker-host fd:// given but no sockets were passed (LISTEN_FDS is unset)")
        else:
            tls = None
            if app.config.tls_cert and app.config.tls_key:
                tls = TLSConfig(Path(app.config.tls_cert), Path(app.config.tls_key),
                                Path(app.config.tls_ca) if app.config.tls_ca else None)
            listeners = list(await open_tcp_listeners(address, loopback_only=tls is None))
            if tls is not None:
                ctx = tls.server_context()
                listeners = [trio.SSLListener(lst, ctx, https_compatible=True) for lst in listeners]
        await nursery.start(serve_listeners, api, listeners)
        log.info("serving the Docker API", extra={"host": host})
    return sockets


__all__ = ["DockerAPI", "HijackResponse", "StreamResponse", "json_response", "listen", "no_content"]
