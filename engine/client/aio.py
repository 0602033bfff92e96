"""An async (trio) client for the engine's RPC, over a unix socket or WebSocket (tcp://).

    async with connect("unix:///run/engine/engine.sock") as c:
        info = await c.call("system.info")
        async with c.stream("system.events") as events:
            async for event in events:
                ...

Calls are multiplexed over one connection: a background task reads responses and routes
them to the waiting calls by msgid.
"""

from __future__ import annotations

import math
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio

from engine.client.sync import default_host
from engine.errors import DaemonNotRunning, EngineError, from_wire
from engine.rpc import protocol
from engine.rpc.transports import parse_host


class _Call:
    def __init__(self, stream: bool) -> None:
        self.done = trio.Event()
        self.error: Any = None
        self.result: Any = None
        self.items: tuple[trio.MemorySendChannel[Any], trio.MemoryReceiveChannel[Any]] | None = (
            trio.open_memory_channel(math.inf) if stream else None
        )


class AsyncStream:
    def __init__(self, client: AsyncClient, msgid: int, call: _Call) -> None:
        self._client = client
        self._msgid = msgid
        self._call = call
        self._unacked = 0

    @property
    def result(self) -> Any:
        return self._call.result

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Any]:
        assert self._call.items is not None
        receive = self._call.items[1]
        async for item in receive:
            yield item
            self._unacked += 1
            if self._unacked >= protocol.STREAM_WINDOW // 2:
                await self._client._send(
                    protocol.encode_notification(protocol.STREAM_ACK, [self._msgid, self._unacked])
                )
                self._unacked = 0
        if self._call.error is not None:
            raise from_wire(self._call.error)

    async def cancel(self) -> None:
        if not self._call.done.is_set():
            await self._client._send(protocol.encode_notification(protocol.CANCEL, [self._msgid]))


class AsyncClient:
    def __init__(self, send: Any, close: Any) -> None:
        self._send_raw = send
        self._close = close
        self._calls: dict[int, _Call] = {}
        self._next_id = 0
        self._send_lock = trio.Lock()
        self._closed_error: EngineError | None = None

    async def _send(self, data: bytes) -> None:
        async with self._send_lock:
            await self._send_raw(data)

    def _dispatch(self, obj: Any) -> None:
        message = protocol.parse_message(obj)
        if isinstance(message, protocol.Response):
            call = self._calls.pop(message.msgid, None)
            if call is None:
                return
            call.error, call.result = message.error, message.result
            if call.items is not None:
                call.items[0].close()
            call.done.set()
        elif isinstance(message, protocol.Notification):
            if message.method == protocol.STREAM_ITEM and len(message.params) == 2:
                call = self._calls.get(message.params[0])
                if call is not None and call.items is not None:
                    call.items[0].send_nowait(message.params[1])
            elif message.method == protocol.ERROR_EVENT:
                self._fail_all(from_wire(message.params[0] if message.params else None))

    def _fail_all(self, error: EngineError) -> None:
        self._closed_error = error
        for call in self._calls.values():
            call.error = error.to_wire()
            if call.items is not None:
                call.items[0].close()
            call.done.set()
        self._calls.clear()

    async def _start(self, method: str, params: dict[str, Any], stream: bool) -> tuple[int, _Call]:
        if self._closed_error is not None:
            raise self._closed_error
        self._next_id = (self._next_id + 1) % protocol.MAX_MSGID
        call = _Call(stream)
        self._calls[self._next_id] = call
        await self._send(protocol.encode_request(self._next_id, method, params))
        return self._next_id, call

    async def call(self, method: str, params: dict[str, Any] | None = None, **kw: Any) -> Any:
        msgid, call = await self._start(method, {**(params or {}), **kw}, stream=False)
        try:
            await call.done.wait()
        except trio.Cancelled:
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await self._send(protocol.encode_notification(protocol.CANCEL, [msgid]))
            raise
        if call.error is not None:
            raise from_wire(call.error)
        return call.result

    @asynccontextmanager
    async def stream(
        self, method: str, params: dict[str, Any] | None = None, **kw: Any
    ) -> AsyncIterator[AsyncStream]:
        msgid, call = await self._start(method, {**(params or {}), **kw}, stream=True)
        stream = AsyncStream(self, msgid, call)
        try:
            yield stream
        finally:
            if not call.done.is_set():
                with trio.CancelScope(shield=True), trio.move_on_after(1):
                    await stream.cancel()


@asynccontextmanager
async def connect(host: str | None = None, *, ssl_context: ssl.SSLContext | None = None) -> AsyncIterator[AsyncClient]:
    kind, address = parse_host(host or default_host())
    if kind == "unix":
        async with _connect_unix(address) as client:
            yield client
    elif kind == "tcp":
        async with _connect_websocket(address, ssl_context) as client:
            yield client
    else:
        raise EngineError(f"cannot connect to {host!r}: use unix:// or tcp://")


@asynccontextmanager
async def _connect_unix(path: str) -> AsyncIterator[AsyncClient]:
    try:
        stream = await trio.open_unix_socket(path)
    except (FileNotFoundError, ConnectionRefusedError):
        raise DaemonNotRunning(f"cannot connect to the engine daemon at unix://{path}") from None
    client = AsyncClient(stream.send_all, stream.aclose)
    decoder = protocol.Decoder()

    async def reader() -> None:
        try:
            while data := await stream.receive_some(262144):
                for obj in decoder.feed(data):
                    client._dispatch(obj)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        client._fail_all(DaemonNotRunning("the daemon closed the connection"))

    async with stream, trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        try:
            yield client
        finally:
            nursery.cancel_scope.cancel()


@asynccontextmanager
async def _connect_websocket(address: str, ssl_context: ssl.SSLContext | None) -> AsyncIterator[AsyncClient]:
    from trio_websocket import ConnectionClosed, open_websocket

    host, _, port = address.rpartition(":")
    async with open_websocket(host, int(port), "/", use_ssl=ssl_context or False) as ws:
        client = AsyncClient(ws.send_message, ws.aclose)

        async def reader() -> None:
            try:
                while True:
                    data = await ws.get_message()
                    for obj in protocol.Decoder().feed(data if isinstance(data, bytes) else data.encode()):
                        client._dispatch(obj)
            except ConnectionClosed:
                client._fail_all(DaemonNotRunning("the daemon closed the connection"))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            try:
                yield client
            finally:
                nursery.cancel_scope.cancel()
