"""Attached streams over hijacked connections: ``POST /containers/{id}/attach`` and the
input side of ``POST /exec/{id}/start``.

docker's clients attach *before* they start a container (``docker run``, ``start -a``):
the attach request takes the connection over, then a separate ``POST …/start`` comes. An
attach to a container that is not running is therefore kept as a ``PendingStart``; the
start request hands the start to it, and the attached connection drives
``ContainerService.start`` with its output and input (so not a byte is missed, as the
engine's own ``run`` does), while the start request waits until the container has started
(or failed to) and answers 204 (or the error).

The wire: without a terminal, output goes as stdcopy frames (stream id 1 stdout, 2 stderr)
and what the client writes is the process's stdin; with one, raw bytes both ways. The
client's half-close (``CloseWrite``) is the end of its stdin. Terminal sizes come through
their own requests (``/containers/{id}/resize``, ``/exec/{id}/resize``).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import attrs
import trio

from engine.actors.container import ContainerActor
from engine.actors.state import ContainerState
from engine.dockerapi.shapes import stdcopy_frame
from engine.errors import EngineError, Unavailable
from engine.httpserver import Hijacked

log = logging.getLogger("engine.dockerapi")

START_WAIT = 120.0  # seconds a start request waits for the attached connection to start it
INPUT_QUEUE = 16  # items between the socket reader (or a resize request) and the session

Send = Callable[[dict[str, Any]], Awaitable[None]]
RUNNING = (ContainerState.RUNNING, ContainerState.PAUSED)
GONE = (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError)


@attrs.define(eq=False)
class PendingStart:
    """An attach waiting for its container's start (docker attaches first)."""

    container_id: str
    requested: trio.Event = attrs.field(factory=trio.Event)
    done: trio.Event = attrs.field(factory=trio.Event)
    error: EngineError | None = None

    def finish(self, error: EngineError | None = None) -> None:
        if not self.done.is_set():
            self.error = error
            self.done.set()


class PendingStarts:
    """The attached connections waiting for their container's start, oldest first."""

    def __init__(self) -> None:
        self._waiting: dict[str, list[PendingStart]] = {}

    def add(self, container_id: str) -> PendingStart:
        pending = PendingStart(container_id)
        self._waiting.setdefault(container_id, []).append(pending)
        return pending

    def discard(self, pending: PendingStart) -> None:
        entries = self._waiting.get(pending.container_id, [])
        if pending in entries:
            entries.remove(pending)
        if not entries:
            self._waiting.pop(pending.container_id, None)

    def claim(self, container_id: str) -> PendingStart | None:
        """The oldest attach waiting for this container, now asked to start it."""
        entries = self._waiting.get(container_id) or []
        while entries:
            pending = entries.pop(0)
            if not pending.requested.is_set():
                if not entries:
                    self._waiting.pop(container_id, None)
                pending.requested.set()
                return pending
        self._waiting.pop(container_id, None)
        return None

    def others(self, container_id: str) -> list[PendingStart]:
        return list(self._waiting.get(container_id) or [])


async def handed_start(pending: PendingStart) -> None:
    """The start request's side: wait until the attached connection has started the
    container; its error is the request's."""
    with trio.move_on_after(START_WAIT) as waited:
        await pending.done.wait()
    if waited.cancelled_caught:
        raise Unavailable("the attached connection did not start the container in time")
    if pending.error is not None:
        raise pending.error


def output_sender(conn: Hijacked, *, tty: bool, streams: set[str]) -> Send:
    """Output items as the wire wants them: raw with a terminal, else stdcopy frames;
    streams the client did not ask for are dropped."""

    async def send(item: dict[str, Any]) -> None:
        stream = str(item.get("stream") or "stdout")
        if stream not in streams:
            return
        data = item.get("data") or b""
        if isinstance(data, str):
            data = data.encode()
        if not data:
            return
        await conn.send_all(bytes(data) if tty else stdcopy_frame(stream, bytes(data)))

    return send


class ConnectionInput:
    """The client's side of a hijacked connection as the engine's input items (``stdin``
    chunks, then ``eof`` at its half-close), merged with control items (``resize``) that
    other requests put in. Iterate it while ``read`` runs."""

    def __init__(self, conn: Hijacked, *, stdin: bool) -> None:
        self._conn = conn
        self._stdin = stdin
        self._send, self._receive = trio.open_memory_channel[dict[str, Any]](INPUT_QUEUE)

    async def read(self) -> None:
        """Read the socket until the client's half-close (or its going away)."""
        try:
            while data := await self._conn.receive_some():
                if self._stdin:
                    await self._send.send({"stdin": data})
        except GONE:
            pass
        if self._stdin:
            await self._send.send({"eof": True})

    async def control(self, item: dict[str, Any]) -> None:
        with trio.move_on_after(5):
            await self._send.send(item)

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        return self._receive.__aiter__()


async def until_started(actor: ContainerActor, started_at: float, pending: PendingStart) -> None:
    """Tell the start request once this container's new run has begun."""
    await actor.wait_for(lambda s: s.started_at != started_at)
    pending.finish()


async def drive_start(pending: PendingStart, actor: ContainerActor,
                      start: Callable[[], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
    """Run ``start()`` (ContainerService.start with this connection's output and input)
    now that the start request came; a start that fails fails the start request too."""
    before = actor.status.started_at
    outcome: dict[str, Any] = {}
    async with trio.open_nursery() as nursery:
        nursery.start_soon(until_started, actor, before, pending)
        try:
            outcome["result"] = await start()
        except EngineError as e:
            pending.finish(e)
            outcome["error"] = e
        finally:
            pending.finish()
            nursery.cancel_scope.cancel()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]  # type: ignore[no-any-return]


async def wait_for_start(pending: PendingStart, actor: ContainerActor) -> bool:
    """Wait until a start request hands the start over (True), or the container starts
    some other way or is removed (False)."""
    async with trio.open_nursery() as nursery:

        async def handed() -> None:
            await pending.requested.wait()
            nursery.cancel_scope.cancel()

        async def elsewhere() -> None:
            await actor.wait_for(lambda s: s.state in RUNNING)
            nursery.cancel_scope.cancel()

        nursery.start_soon(handed)
        nursery.start_soon(elsewhere)
    return pending.requested.is_set()
