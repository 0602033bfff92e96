"""Exec, attach and port-forward over a WebSocket: the channel protocols kubelet's streaming
server serves beside SPDY (k8s.io/apiserver wsstream; kubelet's remotecommand/websocket.go
and portforward/websocket.go).

Every message carries one channel: its first byte is the channel number (binary
protocols), or its first character the number's digit and the rest base64 (``base64.``
protocols). exec/attach channels: 0 stdin, 1 stdout, 2 stderr, 3 error (the status at the
end; JSON for v4 and v5), 4 resize (JSON sizes). v5 adds a close signal: channel 255 with
the number of the channel the client closes (its stdin). Port-forward: for the i-th port,
channel 2i carries data and 2i+1 errors; the first message of each starts with the port as
two little-endian bytes.

A browser page may open a WebSocket to a loopback port: a handshake with an ``Origin`` must
come from the server's own origin or one of ws_allowed_origins, else 403.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import trio
from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Message, Ping, TextMessage
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from engine.cri.streaming import portforward
from engine.cri.streaming.commands import Status, run_attach, run_exec
from engine.cri.streaming.spdysessions import resize_items
from engine.cri.streaming.targets import AttachTarget, ExecTarget, PortForwardTarget, Target
from engine.httpserver import HijackResponse, Request, Response

log = logging.getLogger("engine.cri.streaming")

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MAX_MESSAGE = 1 << 20  # bytes of one client message
RECEIVE_SIZE = 64 * 1024
SEND_TIMEOUT = 120.0
CLOSE_GRACE = 5.0  # seconds the client gets to answer our close

STDIN, STDOUT, STDERR, ERROR, RESIZE, CLOSE_SIGNAL = 0, 1, 2, 3, 4, 255
CHANNEL_OF = {"stdout": STDOUT, "stderr": STDERR}

# protocol name -> (binary framing, status as JSON, close signal)
COMMAND_PROTOCOLS = {
    "v5.channel.k8s.io": (True, True, True),
    "v4.channel.k8s.io": (True, True, False),
    "v4.base64.channel.k8s.io": (False, True, False),
    "channel.k8s.io": (True, False, False),
    "base64.channel.k8s.io": (False, False, False),
}
PORTFORWARD_PROTOCOLS = {
    "portforward.k8s.io": True,
    "v4.channel.k8s.io": True,
    "v4.base64.channel.k8s.io": False,
}


def is_websocket(headers: dict[str, str]) -> bool:
    return "websocket" in headers.get("upgrade", "").lower() and "upgrade" in headers.get("connection", "").lower()


def _text(status: int, message: str) -> Response:
    return Response(status=status, body=(message + "\n").encode(), content_type="text/plain; charset=utf-8")


def origin_allowed(headers: dict[str, str], allowed: list[str]) -> bool:
    origin = headers.get("origin", "").strip()
    if not origin:
        return True  # not a browser
    if origin.rstrip("/") in [a.rstrip("/") for a in allowed]:
        return True
    return urlsplit(origin).netloc.lower() == headers.get("host", "").strip().lower()


def upgrade(request: Request, target: Target, app: Any, allowed_origins: list[str]) -> Any:
    headers = request.headers
    if not origin_allowed(headers, allowed_origins):
        return _text(403, f"origin {headers.get('origin')!r} may not open this WebSocket "
                          "(allow it with --ws-allowed-origin)")
    key = headers.get("sec-websocket-key", "").strip()
    if not key or headers.get("sec-websocket-version", "").strip() != "13":
        return _text(400, "bad WebSocket handshake: Sec-WebSocket-Key and Sec-WebSocket-Version: 13 "
                          "are required")
    supported = PORTFORWARD_PROTOCOLS if isinstance(target, PortForwardTarget) else COMMAND_PROTOCOLS
    offered = [p.strip() for p in headers.get("sec-websocket-protocol", "").split(",") if p.strip()]
    protocol = next((p for p in offered if p in supported), "")
    if offered and not protocol:
        return _text(400, f"unable to upgrade: requested protocol(s) {offered} are not supported; "
                          f"this server speaks {list(supported)}")
    accept = base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()
    extra = [("Sec-WebSocket-Accept", accept)]
    if protocol:
        extra.append(("Sec-WebSocket-Protocol", protocol))

    async def run(hijacked: Any) -> None:
        ws = WebSocketChannels(hijacked, binary=COMMAND_PROTOCOLS.get(protocol, (True,))[0]
                               if not isinstance(target, PortForwardTarget)
                               else PORTFORWARD_PROTOCOLS.get(protocol, True))
        if isinstance(target, PortForwardTarget):
            ports = list(target.ports) or _query_ports(request)
            await serve_portforward(ws, target, ports)
        else:
            await serve_command(ws, target, app, protocol or "channel.k8s.io")

    return HijackResponse(run=run, content_type="", upgrade="websocket", headers=extra)


def _query_ports(request: Request) -> list[int]:
    ports = []
    for value in request.query.get("ports", []) + request.query.get("port", []):
        for part in value.split(","):
            if part.strip().isdigit() and 0 < int(part) < 65536:
                ports.append(int(part))
    return ports


class WebSocketChannels:
    """A server WebSocket (wsproto) carrying numbered channels."""

    def __init__(self, transport: Any, binary: bool) -> None:
        self.transport = transport
        self.binary = binary
        self.ws = Connection(ConnectionType.SERVER)
        self._lock = trio.StrictFIFOLock()
        self.closed = trio.Event()

    async def _send(self, event: Any) -> None:
        async with self._lock:
            try:
                data = self.ws.send(event)
                with trio.fail_after(SEND_TIMEOUT):
                    await self.transport.send_all(data)
            except (LocalProtocolError, trio.BrokenResourceError, trio.ClosedResourceError,
                    trio.TooSlowError, OSError):
                self.closed.set()

    async def write(self, channel: int, data: bytes) -> None:
        if self.closed.is_set() or self.ws.state is not ConnectionState.OPEN:
            return
        if self.binary:
            await self._send(BytesMessage(data=bytes([channel]) + data))
        else:
            await self._send(TextMessage(data=str(channel) + base64.b64encode(data).decode()))

    async def close(self, code: int = 1000, reason: str = "") -> None:
        if self.ws.state is ConnectionState.OPEN:
            await self._send(CloseConnection(code=code, reason=reason))

    async def messages(self) -> AsyncIterator[tuple[int, bytes]]:
        """(channel, data) of each whole client message, until the client closes."""
        parts: list[bytes | str] = []
        size = 0
        try:
            while not self.closed.is_set():
                try:
                    data = await self.transport.receive_some(RECEIVE_SIZE)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    data = b""
                self.ws.receive_data(data or None)
                for event in self.ws.events():
                    if isinstance(event, Ping):
                        await self._send(event.response())
                    elif isinstance(event, CloseConnection):
                        if self.ws.state is ConnectionState.REMOTE_CLOSING:
                            await self._send(event.response())
                        self.closed.set()
                        return
                    elif isinstance(event, Message):
                        parts.append(event.data)
                        size += len(event.data)
                        if size > MAX_MESSAGE:
                            await self.close(1009, "message too big")
                            self.closed.set()
                            return
                        if event.message_finished:
                            decoded = self._decode(parts, isinstance(event, TextMessage))
                            parts, size = [], 0
                            if decoded is not None:
                                yield decoded
                if not data:
                    self.closed.set()
                    return
        except RemoteProtocolError as e:
            log.info("WebSocket client broke the protocol: %s", e)
            self.closed.set()

    def _decode(self, parts: list[Any], text: bool) -> tuple[int, bytes] | None:
        if text:
            message = "".join(parts)
            if not message or not message[0].isdigit():
                return None
            try:
                return int(message[0]), base64.b64decode(message[1:])
            except ValueError:
                return None
        raw = b"".join(parts)
        return (raw[0], raw[1:]) if raw else None


async def serve_command(ws: WebSocketChannels, target: ExecTarget | AttachTarget, app: Any,
                        protocol: str) -> None:
    _binary, json_status, close_signal = COMMAND_PROTOCOLS.get(protocol, (True, False, False))
    # an empty message on the lowest channel we write tells the client the session is up
    first = STDOUT if target.stdout else STDERR if target.stderr else ERROR
    await ws.write(first, b"")
    send_items, items = trio.open_memory_channel[dict[str, Any]](4)
    resize_send, resize_receive = trio.open_memory_channel[bytes](4)

    class IO:
        async def write(self, stream: str, data: bytes) -> None:
            channel = CHANNEL_OF.get(stream)
            if channel is not None and (target.stdout if channel == STDOUT else target.stderr):
                await ws.write(channel, data)

        def input(self) -> Any:
            return items if (target.stdin or target.tty) else None

    status: Status | None = None
    async with trio.open_nursery() as nursery:

        async def reader() -> None:
            async with send_items, resize_send:
                async for channel, data in ws.messages():
                    if channel == STDIN and target.stdin and data:
                        await send_items.send({"stdin": data})
                    elif channel == RESIZE and target.tty:
                        await resize_send.send(data)
                    elif channel == CLOSE_SIGNAL and close_signal and data[:1] == bytes([STDIN]):
                        await send_items.send({"eof": True})
            nursery.cancel_scope.cancel()  # the client went away: the session ends

        async def resizes() -> None:
            async for item in resize_items(_eof_receiver(resize_receive)):
                try:
                    await send_items.send(item)
                except (trio.ClosedResourceError, trio.BrokenResourceError):
                    return
        nursery.start_soon(reader)
        nursery.start_soon(resizes)
        runner = run_exec if isinstance(target, ExecTarget) else run_attach
        status = await runner(app, target, IO())  # type: ignore[arg-type]
        nursery.cancel_scope.cancel()
    if status is not None and not ws.closed.is_set():
        if json_status:
            await ws.write(ERROR, json.dumps(status, separators=(",", ":")).encode())
        elif status.get("status") != "Success":
            await ws.write(ERROR, str(status.get("message", "")).encode())
        await ws.close()
        await _drain(ws)


def _eof_receiver(channel: Any) -> Any:
    async def receive() -> bytes:
        try:
            return bytes(await channel.receive())
        except (trio.EndOfChannel, trio.ClosedResourceError):
            return b""

    return receive


async def _drain(ws: WebSocketChannels) -> None:
    """After our close: read until the client's close comes (or a short grace passes)."""
    with trio.move_on_after(CLOSE_GRACE):
        async for _ in ws.messages():
            pass


async def serve_portforward(ws: WebSocketChannels, target: PortForwardTarget, ports: list[int]) -> None:
    if not ports:
        await ws.close(1008, "no port to forward: name them in the PortForward request or ?ports=")
        return
    inboxes = [trio.open_memory_channel[bytes](16) for _ in ports]
    for i, port in enumerate(ports):
        prefix = port.to_bytes(2, "little")
        await ws.write(2 * i, prefix)
        await ws.write(2 * i + 1, prefix)

    async def one(i: int, port: int) -> None:
        receive = _eof_receiver(inboxes[i][1])
        try:
            pod = await portforward.connect(target.netns, port)
        except OSError as e:
            await ws.write(2 * i + 1, portforward.error_message(port, target.sandbox_id, e).encode())
            return
        async with pod:
            await portforward.forward(pod, receive, lambda data: ws.write(2 * i, data), lambda: False)

    async with trio.open_nursery() as nursery:

        async def reader() -> None:
            async for channel, data in ws.messages():
                if channel % 2 == 0 and channel // 2 < len(ports) and data:
                    try:
                        await inboxes[channel // 2][0].send(data)
                    except (trio.ClosedResourceError, trio.BrokenResourceError):
                        pass
            nursery.cancel_scope.cancel()

        nursery.start_soon(reader)
        async with trio.open_nursery() as forwards:
            for i, port in enumerate(ports):
                forwards.start_soon(one, i, port)
        nursery.cancel_scope.cancel()
    if not ws.closed.is_set():
        await ws.close()
        await _drain(ws)
