"""Exec, attach and port-forward over SPDY/3.1, as kubelet's streaming server serves them
(k8s.io/kubelet pkg/kubelet/cri/streaming/{remotecommand,portforward}/httpstream.go).

remotecommand: the client opens one stream per stdio channel it wants, each named by its
``streamtype`` header (error, stdin, stdout, stderr, resize); the session starts once all
the request asked for are there (``STREAM_CREATION_TIMEOUT``). The command's output goes
on stdout/stderr, its end as a status on the error stream. The client going away cancels
the session (an exec'd process is killed).

portforward: for each forwarded connection the client opens an ``error`` and a ``data``
stream with the same ``requestid`` and a ``port`` header; each pair is one TCP connection
to that port in the pod.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import attrs
import trio

from engine.cri.streaming import portforward, spdy
from engine.cri.streaming.commands import Runner, Status
from engine.cri.streaming.spdyconn import SpdyConnection, SpdyStream
from engine.cri.streaming.targets import PortForwardTarget

log = logging.getLogger("engine.cri.streaming")

STREAM_CREATION_TIMEOUT = 30.0  # seconds (kubelet's DefaultStreamCreationTimeout)
LINGER = 10.0  # seconds the client gets to close the connection after the status
STDIN_ITEM = 64 * 1024  # bytes per stdin item (engine.supervisor.attach's cap)
MAX_RESIZE_BUFFER = 4096  # bytes of an unfinished resize message

V4 = "v4.channel.k8s.io"
V3 = "v3.channel.k8s.io"
V2 = "v2.channel.k8s.io"
V1 = "channel.k8s.io"
COMMAND_PROTOCOLS = [V4, V3, V2, V1]
PORTFORWARD_PROTOCOLS = ["portforward.k8s.io"]
STREAM_TYPES = ("error", "stdin", "stdout", "stderr", "resize")


def negotiate(offered: list[str], supported: list[str]) -> str:
    """The first protocol of the client's (in its order) that we speak; "" if none."""
    for name in offered:
        if name in supported:
            return name
    return ""


def expected_streams(protocol: str, stdin: bool, stdout: bool, stderr: bool, tty: bool) -> set[str]:
    wanted = {"error"}
    wanted |= {name for name, on in (("stdin", stdin), ("stdout", stdout), ("stderr", stderr)) if on}
    if tty and protocol in (V4, V3):
        wanted.add("resize")
    return wanted


async def resize_items(receive: Any) -> AsyncIterator[dict[str, Any]]:
    """Terminal sizes from a stream of JSON objects ``{"Width": w, "Height": h}`` (in any
    chunking). A message that does not parse ends the resizes, as kubelet's decoder does."""
    decoder = json.JSONDecoder()
    buffer = ""
    while chunk := await receive():
        buffer += chunk.decode("utf-8", "replace")
        while buffer.strip():
            text = buffer.lstrip()
            try:
                doc, end = decoder.raw_decode(text)
            except ValueError:
                if len(buffer) > MAX_RESIZE_BUFFER:
                    return
                break  # incomplete: wait for more
            buffer = text[end:]
            if not isinstance(doc, dict):
                return
            width, height = doc.get("Width"), doc.get("Height")
            if not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 65536
                       for v in (width, height)):
                return
            yield {"resize": [height, width]}


@attrs.define
class SpdyCommandIO:
    protocol: str
    streams: dict[str, SpdyStream]
    items: Any = None  # the receive side of the input items, or None

    async def write(self, stream: str, data: bytes) -> None:
        target = self.streams.get(stream)
        if target is not None:
            await target.send(data)

    def input(self) -> Any:
        return self.items

    async def finish(self, status: Status) -> None:
        for name in ("stdout", "stderr"):
            if name in self.streams:
                await self.streams[name].close()
        error = self.streams["error"]
        if self.protocol == V4:
            await error.send(json.dumps(status, separators=(",", ":")).encode())
        elif status.get("status") != "Success":
            await error.send(str(status.get("message", "")).encode())
        await error.close()
        for name in ("stdin", "resize"):
            if name in self.streams:
                self.streams[name].drop_input()
                await self.streams[name].close()


async def _collect_streams(conn: SpdyConnection, wanted: set[str]) -> dict[str, SpdyStream] | None:
    """The streams the session needs, each answered SYN_REPLY as it comes; None when the
    client does not open them in time or goes away."""
    streams: dict[str, SpdyStream] = {}
    with trio.move_on_after(STREAM_CREATION_TIMEOUT):
        async for stream in conn.new_streams:
            kind = stream.header("streamtype")
            if kind not in wanted or kind in streams:
                log.info("SPDY exec/attach: unexpected stream type %r refused", kind)
                await conn.refuse(stream)
                continue
            if kind == "error":
                stream.discard = True
            streams[kind] = stream
            await conn.accept(stream)
            if set(streams) == wanted:
                return streams
    return None


async def _pump_stdin(stream: SpdyStream, out: trio.MemorySendChannel[dict[str, Any]]) -> None:
    async with out:
        while data := await stream.receive():
            for start in range(0, len(data), STDIN_ITEM):
                await out.send({"stdin": data[start:start + STDIN_ITEM]})
        if not stream.reset:
            await out.send({"eof": True})


async def _pump_resize(stream: SpdyStream, out: trio.MemorySendChannel[dict[str, Any]]) -> None:
    async with out:
        async for item in resize_items(stream.receive):
            await out.send(item)


async def serve_command(transport: Any, protocol: str, wanted: set[str], runner: Runner) -> None:
    """One exec or attach session on the upgraded connection ``transport``."""
    conn = SpdyConnection(transport)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(conn.run)
        streams = await _collect_streams(conn, wanted)
        if streams is None:
            log.info("SPDY exec/attach: the client did not open its streams (%s)", ", ".join(sorted(wanted)))
            nursery.cancel_scope.cancel()
            return
        io = SpdyCommandIO(protocol, streams)
        status: Status | None = None
        with trio.CancelScope() as session:
            async with trio.open_nursery() as inner:

                async def client_gone() -> None:
                    await conn.closed.wait()
                    session.cancel()  # the session ends: an exec'd process is killed

                inner.start_soon(client_gone)
                if "stdin" in streams or "resize" in streams:
                    send, receive = trio.open_memory_channel[dict[str, Any]](4)
                    async with send:
                        if "stdin" in streams:
                            inner.start_soon(_pump_stdin, streams["stdin"], send.clone())
                        if "resize" in streams:
                            inner.start_soon(_pump_resize, streams["resize"], send.clone())
                    io.items = receive
                status = await runner(io)
                inner.cancel_scope.cancel()
        if status is not None and not conn.closed.is_set():
            await io.finish(status)
            with trio.move_on_after(LINGER):
                await conn.closed.wait()
            await conn.go_away()
        nursery.cancel_scope.cancel()


@attrs.define
class _Pair:
    request_id: str
    port: int = 0
    data: SpdyStream | None = None
    error: SpdyStream | None = None
    complete: trio.Event = attrs.field(factory=trio.Event)


def _port_of(stream: SpdyStream) -> int:
    text = stream.header("port")
    if not text:
        raise ValueError('"port" header is required')
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"unable to parse {text!r} as a port")
    return int(text)


async def serve_portforward(transport: Any, target: PortForwardTarget) -> None:
    """Port-forward streams on the upgraded connection until the client closes it."""
    conn = SpdyConnection(transport)
    pairs: dict[str, _Pair] = {}

    async def monitor(pair: _Pair) -> None:
        with trio.move_on_after(STREAM_CREATION_TIMEOUT):
            await pair.complete.wait()
            return
        if pair.error is not None:
            await pair.error.send(f"timed out waiting for streams of request {pair.request_id}".encode())
            await pair.error.close()
        pairs.pop(pair.request_id, None)

    async def run_pair(pair: _Pair) -> None:
        assert pair.data is not None and pair.error is not None
        data, error = pair.data, pair.error
        try:
            try:
                pod = await portforward.connect(target.netns, pair.port)
            except OSError as e:
                await error.send(portforward.error_message(pair.port, target.sandbox_id, e).encode())
                return
            async with pod:
                await portforward.forward(pod, data.receive, data.send, lambda: data.reset)
        finally:
            data.drop_input()
            await data.close()
            await error.close()
            conn.forget(data)
            conn.forget(error)
            pairs.pop(pair.request_id, None)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(conn.run)
        async for stream in conn.new_streams:
            kind = stream.header("streamtype")
            try:
                port = _port_of(stream)
                if kind not in ("error", "data"):
                    raise ValueError(f"invalid stream type {kind!r}")
            except ValueError as e:
                log.info("SPDY port-forward stream refused: %s", e)
                await conn.refuse(stream)
                continue
            request_id = stream.header("requestid") or str(stream.id if kind == "error" else stream.id - 2)
            pair = pairs.get(request_id)
            if pair is None:
                pair = pairs[request_id] = _Pair(request_id, port)
                nursery.start_soon(monitor, pair)
            if getattr(pair, kind) is not None:
                await conn.refuse(stream, spdy.STREAM_IN_USE)
                continue
            await conn.accept(stream)
            if kind == "error":
                stream.discard = True
                pair.error = stream
            else:
                pair.data = stream
            if pair.data is not None and pair.error is not None:
                pair.complete.set()
                nursery.start_soon(run_pair, pair)
        nursery.cancel_scope.cancel()
