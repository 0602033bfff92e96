"""Exec start, inspect and resize (create is a container route).

A started exec that is not detached takes the connection over (``Upgrade: tcp`` → 101) and
streams the command's output as stdcopy frames (raw bytes with a terminal), and the client's
stdin to it (``AttachStdin``); the connection closes when the command ends,
and ``GET /exec/{id}/json`` then has its exit code. Errors found before the upgrade (no
such exec, container not running) are ordinary error responses.
"""

from __future__ import annotations

import logging
from typing import Any

import attrs
import trio

from engine.actors.state import ContainerState
from engine.dockerapi import messages
from engine.dockerapi.attach import GONE, ConnectionInput, output_sender
from engine.dockerapi.execs import ExecInstance
from engine.dockerapi.routes.containers import console_size, log_content_type, service, window
from engine.dockerapi.server import DockerAPI, Router, json_response, no_content
from engine.errors import Conflict, EngineError, InvalidArgument, RuntimeFailure
from engine.httpserver import Hijacked, HijackResponse, Request, Response
from engine.oci.attach import check_window

log = logging.getLogger("engine.dockerapi")

EXEC_FAILED = 126  # docker's exit code for an exec that could not be started
DETACHED_START_WAIT = 30.0  # seconds a detached start waits to learn whether the process started


def register(router: Router) -> None:
    router.route("POST", "/exec/{id}/start")(start)
    router.route("GET", "/exec/{id}/json")(inspect)
    router.route("POST", "/exec/{id}/resize")(resize)


async def inspect(api: DockerAPI, req: Request) -> Response:
    return json_response(api.execs.get(req.path_params["id"]).inspect())


async def resize(api: DockerAPI, req: Request) -> Response:
    instance = api.execs.get(req.path_params["id"])
    if not instance.spec.tty:
        raise InvalidArgument(f"exec {instance.id[:12]} has no terminal to resize (create it with Tty)")
    rows, cols = window(req)
    check_window(rows, cols)
    if instance.input is not None and instance.running:
        await instance.input.control({"resize": [rows, cols]})
    else:
        instance.console_size = (rows, cols)  # given to the terminal when it starts
    return Response(200, b"", content_type="text/plain; charset=utf-8")


@attrs.define
class DetachedStart:
    """What a detached exec start waits for: the process started, or why it could not."""

    handle: Any = None
    failure: EngineError | None = None
    ended: bool = False

    def known(self) -> bool:
        return (self.failure is not None or self.ended
                or (self.handle is not None and getattr(self.handle, "started", None) is True))


async def run_exec(api: DockerAPI, instance: ExecInstance, send: Any, input: Any = None,
                   detached: DetachedStart | None = None) -> None:
    """Run the exec through the container service; record how it ended. An exec that could
    not start is told as dockerd 20.10 tells it: its error on the client's stdout (ended by
    ``\r\n``) and exit code 126, whatever the reason (the runtime's words in containerd's
    wrapping: "OCI runtime exec failed: …: unknown")."""
    code = EXEC_FAILED
    handles: list[Any] = []

    async def started(handle: Any) -> None:
        handles.append(handle)
        if detached is not None:
            detached.handle = handle
        await api.execs.session_started(instance, handle)

    def not_started() -> bool:
        return bool(handles) and getattr(handles[0], "started", None) is False

    async def relay(item: dict[str, Any]) -> None:
        if not not_started():  # else: engine's own account of the failure, told below
            await send(item)

    async def tell(error: EngineError) -> None:
        if detached is not None:  # a detached start answers with it (dockerd's error response)
            detached.failure = error
        await send({"stream": "stdout", "data": f"{error}\r\n".encode()})

    try:
        result = await service(api).exec(instance.spec, relay, input, started=started, exec_id=instance.id)
        code = int(result.get("ExitCode", EXEC_FAILED))
        if not_started():
            code = EXEC_FAILED
            failure = getattr(handles[0], "failure", None) or "the runtime could not start the process"
            await tell(RuntimeFailure(f"OCI runtime exec failed: {failure}: unknown"))
    except RuntimeFailure as e:
        code = EXEC_FAILED
        words = e.details.get("runtime_error") or str(e)
        await tell(RuntimeFailure(f"OCI runtime exec failed: {words}: unknown"))
    except EngineError as e:
        code = EXEC_FAILED
        await tell(messages.unknown_user(e))
    finally:
        if detached is not None:
            detached.ended = True
        with trio.CancelScope(shield=True):
            await api.execs.ended(instance, code)


async def start(api: DockerAPI, req: Request) -> Response | HijackResponse:
    """Detached: the exec runs on its own (its output is dropped). Otherwise the connection
    is taken over: its output (stdcopy frames, or raw with a terminal), the client's stdin
    with AttachStdin, and the terminal's size from ``/exec/{id}/resize``."""
    doc = await req.json_object()
    instance = api.execs.get(req.path_params["id"])
    if doc.get("Tty") and not instance.spec.tty:
        raise InvalidArgument("Tty at start needs Tty at create: the exec was created without a terminal")
    size = console_size(doc.get("ConsoleSize")) or instance.console_size
    actor = service(api).get(instance.container_id)
    if actor.status.state != ContainerState.RUNNING:
        raise Conflict(f"container {actor.id} is not running")
    instance = api.execs.claim(instance.id)

    if doc.get("Detach"):
        async def discard(_item: dict[str, Any]) -> None:
            return None

        # dockerd answers once the process has started, or with why it could not
        outcome = DetachedStart()
        api.background(run_exec, api, instance, discard, None, outcome)
        with trio.move_on_after(DETACHED_START_WAIT):
            # the handle tells "started" by an attribute only (conmon's first message)
            while not outcome.known():  # noqa: ASYNC110
                await trio.sleep(0.01)
        if outcome.failure is not None:
            raise outcome.failure
        return no_content(200)

    tty = instance.spec.tty

    async def talk(conn: Hijacked) -> None:
        send = output_sender(conn, tty=tty, streams={"stdout", "stderr"})
        input = ConnectionInput(conn, stdin=instance.spec.stdin)
        instance.input = input
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(input.read)
                if tty and size:
                    await input.control({"resize": list(size)})
                await run_exec(api, instance, send, input if (tty or instance.spec.stdin) else None)
                nursery.cancel_scope.cancel()
        except* GONE:
            log.debug("exec %s: the client went away", instance.id[:12])

    content_type = "application/vnd.docker.raw-stream" if tty else log_content_type(req)
    return HijackResponse(talk, content_type=content_type)
