"""Exec and attach sessions, whatever carries them (SPDY streams or WebSocket channels).

A transport gives a ``CommandIO``: ``write`` for the process's output, ``input`` (the
client's stdin, its EOF and terminal sizes as engine.supervisor.attach items, or None) and
``finish`` for the closing status. ``run_exec`` / ``run_attach`` return that status: a
metav1.Status as kubelet writes it on the error stream (v4 protocols carry it as JSON; older
ones only a failure's message).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

import trio

from engine.cri.streaming.targets import AttachTarget, ExecTarget
from engine.errors import EngineError

log = logging.getLogger("engine.cri.streaming")

Status = dict[str, Any]


def status_success() -> Status:
    return {"metadata": {}, "status": "Success"}


def status_exit_code(code: int) -> Status:
    return {"metadata": {}, "status": "Failure",
            "message": f"command terminated with non-zero exit code: exit status {code}",
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]}}


def status_error(message: str) -> Status:
    return {"metadata": {}, "status": "Failure", "message": f"Internal error occurred: {message}",
            "reason": "InternalError", "details": {"causes": [{"message": message}]}, "code": 500}


class CommandIO(Protocol):
    async def write(self, stream: str, data: bytes) -> None: ...

    def input(self) -> AsyncIterator[dict[str, Any]] | None: ...


def _service(app: Any) -> Any:
    from engine.supervisor.container_service import ContainerService

    return ContainerService(app)


async def run_exec(app: Any, target: ExecTarget, io: CommandIO) -> Status:
    from engine.supervisor.container_service import ExecSpec

    async def send(item: dict[str, Any]) -> None:
        await io.write(item["stream"], item["data"])

    spec = ExecSpec(id=target.container_id, cmd=list(target.cmd), stdin=target.stdin, tty=target.tty)
    try:
        result = await _service(app).exec(spec, send, io.input())
    except EngineError as e:
        return status_error(f"error executing command in container: {e}")
    code = int(result.get("ExitCode", 255))
    return status_success() if code == 0 else status_exit_code(code)


async def run_attach(app: Any, target: AttachTarget, io: CommandIO) -> Status:
    """Join the container's stdio until it exits, or until the client's stdin ends (its
    stdin stays open for the next client, unless the container has stdin_once)."""
    from engine.supervisor.container_service import AttachSpec

    async def send(item: dict[str, Any]) -> None:
        await io.write(item["stream"], item["data"])

    source = io.input()
    with trio.CancelScope() as scope:
        items = None if source is None else _until_stdin_ends(source, scope, target.stdin_once)
        try:
            await _service(app).attach(AttachSpec(id=target.container_id, stdin=target.stdin),
                                       send, items)
        except EngineError as e:
            return status_error(f"error attaching to container: {e}")
    return status_success()


async def _until_stdin_ends(source: AsyncIterator[dict[str, Any]], scope: trio.CancelScope,
                            stdin_once: bool) -> AsyncIterator[dict[str, Any]]:
    async for item in source:
        if item.get("eof") and not stdin_once:
            scope.cancel()  # the session ends; the container's stdin stays open
            return
        yield item


Runner = Callable[[CommandIO], Awaitable[Status]]
