"""Exec start, inspect and resize (create is a container route).

A started exec that is not detached takes the connection over (``Upgrade: tcp`` → 101) and
streams the command's output as stdcopy frames; the connection closes when the command ends,
and ``GET /exec/{id}/json`` then has its exit code. Errors found before the upgrade (no
such exec, container not running) are ordinary error responses.
"""

from __future__ import annotations

import logging
from typing import Any

import trio

from engine.actors.state import ContainerState
from engine.dockerapi.execs import ExecInstance
from engine.dockerapi.http import Hijacked, HijackResponse, Request, Response
from engine.dockerapi.routes.containers import log_content_type, service
from engine.dockerapi.server import DockerAPI, Router, json_response, no_content
from engine.dockerapi.shapes import stdcopy_frame
from engine.errors import Conflict, EngineError, InvalidArgument

log = logging.getLogger("engine.dockerapi")

EXEC_FAILED = 126  # docker's exit code for an exec that could not be started


def register(router: Router) -> None:
    router.route("POST", "/exec/{id}/start")(start)
    router.route("GET", "/exec/{id}/json")(inspect)
    router.route("POST", "/exec/{id}/resize")(resize)


async def inspect(api: DockerAPI, req: Request) -> Response:
    return json_response(api.execs.get(req.path_params["id"]).inspect())


async def resize(api: DockerAPI, req: Request) -> Response:
    api.execs.get(req.path_params["id"])
    raise InvalidArgument("cannot resize an exec without a TTY (engine's execs have none yet)")


async def run_exec(api: DockerAPI, instance: ExecInstance, send: Any) -> None:
    """Run the exec through the container service; record how it ended."""
    code = EXEC_FAILED
    try:
        result = await service(api).exec(instance.spec, send)
        code = int(result.get("ExitCode", EXEC_FAILED))
    except EngineError as e:
        code = e.exit_code if e.exit_code in (126, 127) else EXEC_FAILED
        await send({"stream": "stderr", "data": f"{e}\n".encode()})
    finally:
        instance.exit_code = code
        instance.running = False


async def start(api: DockerAPI, req: Request) -> Response | HijackResponse:
    doc = await req.json_object()
    if doc.get("Tty"):
        raise InvalidArgument("Tty is not supported by engine's exec yet: run without -t")
    instance = api.execs.get(req.path_params["id"])
    actor = service(api).get(instance.container_id)
    if actor.status.state != ContainerState.RUNNING:
        raise Conflict(f"container {actor.id} is not running")
    instance = api.execs.claim(instance.id)

    if doc.get("Detach"):
        async def discard(_item: dict[str, Any]) -> None:
            return None

        api.background(run_exec, api, instance, discard)
        return no_content(200)

    async def talk(conn: Hijacked) -> None:
        async def send(item: dict[str, Any]) -> None:
            await conn.send_all(stdcopy_frame(str(item.get("stream", "stdout")), bytes(item["data"])))

        async def drain_stdin() -> None:
            # no stdin for engine's execs: read and drop what comes, until EOF
            try:
                while await conn.receive_some():
                    pass
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(drain_stdin)
                await run_exec(api, instance, send)
                nursery.cancel_scope.cancel()
        except* (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError):
            log.debug("exec %s: the client went away", instance.id[:12])

    return HijackResponse(talk, content_type=log_content_type(req))
