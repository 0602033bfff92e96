"""An async (trio) client for the engine's RPC, over a unix socket or WebSocket (tcp://).

    async with connect("unix:///run/engine/engine.sock") as c:
        info = await c.call("system.info")
        async with c.stream("system.events") as events:
            async for event in events:
                ...

Calls that take input (attach, run -i, exec -i) are duplex streams::

        async with c.attach("web") as session:
            await session.write(b"echo hi\n")
            async for item in session:       # {"stream": "stdout", "data": b"..."}
                ...

Calls are multiplexed over one connection: a background task reads responses and routes
them to the waiting calls by msgid.
"""

from __future__ import annotations

import math
import ssl
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, TypeVar

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
        self.credit = protocol.STREAM_WINDOW  # input items the server will take now
        self.credit_changed = trio.Event()

    def grant(self, n: int) -> None:
        self.credit += max(0, n)
        self.credit_changed.set()
        self.credit_changed = trio.Event()


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


class AsyncDuplexStream(AsyncStream):
    """A streaming call that also takes input (``$stream.in``): ``await send(item)`` waits
    for the server's credit; ``write``, ``close_stdin``, ``resize`` and ``signal`` are the
    items of attached sessions. Iterate for the output; ``result`` once it has ended."""

    async def send(self, item: Any) -> bool:
        """False when the call has ended (the item is dropped)."""
        call = self._call
        while call.credit <= 0 and not call.done.is_set():
            await call.credit_changed.wait()  # set by a grant and by the end of the call
        if call.done.is_set():
            return False
        call.credit -= 1
        await self._client._send(protocol.encode_notification(protocol.STREAM_IN, [self._msgid, item]))
        return True

    async def write(self, data: bytes) -> bool:
        step = protocol.MAX_INPUT_ITEM
        for start in range(0, len(data), step):
            if not await self.send({"stdin": bytes(data[start:start + step])}):
                return False
        return True

    async def close_stdin(self) -> bool:
        return await self.send({"eof": True})

    async def resize(self, rows: int, cols: int) -> bool:
        return await self.send({"resize": [int(rows), int(cols)]})

    async def signal(self, signum: int) -> bool:
        return await self.send({"signal": int(signum)})


S = TypeVar("S", bound=AsyncStream)


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
            call.grant(0)
        elif isinstance(message, protocol.Notification):
            if message.method == protocol.STREAM_ITEM and len(message.params) == 2:
                call = self._calls.get(message.params[0])
                if call is not None and call.items is not None:
                    call.items[0].send_nowait(message.params[1])
            elif message.method == protocol.STREAM_IN_ACK and len(message.params) == 2:
                call = self._calls.get(message.params[0])
                if call is not None and isinstance(message.params[1], int):
                    call.grant(message.params[1])
            elif message.method == protocol.ERROR_EVENT:
                self._fail_all(from_wire(message.params[0] if message.params else None))

    def _fail_all(self, error: EngineError) -> None:
        self._closed_error = error
        for call in self._calls.values():
            call.error = error.to_wire()
            if call.items is not None:
                call.items[0].close()
            call.done.set()
            call.grant(0)
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
        async with self._open(AsyncStream, method, {**(params or {}), **kw}) as stream:
            yield stream

    @asynccontextmanager
    async def _open(self, kind: type[S], method: str, params: dict[str, Any]) -> AsyncIterator[S]:
        """A streaming call as ``kind``, cancelled if the block is left before it ends."""
        msgid, call = await self._start(method, params, stream=True)
        stream = kind(self, msgid, call)
        try:
            yield stream
        finally:
            if not call.done.is_set():
                with trio.CancelScope(shield=True), trio.move_on_after(1):
                    await stream.cancel()

    @asynccontextmanager
    async def duplex(
        self, method: str, params: dict[str, Any] | None = None, **kw: Any
    ) -> AsyncIterator[AsyncDuplexStream]:
        """A streaming call of a method that takes input (``rpc.describe``: input)."""
        async with self._open(AsyncDuplexStream, method, {**(params or {}), **kw}) as stream:
            yield stream

    def attach(self, container: str, *, stdin: bool = True,
               detach_keys: str = "") -> AbstractAsyncContextManager[AsyncDuplexStream]:
        """Join a running container's stdio (``container.attach``); see ``duplex``."""
        return self.duplex("container.attach", id=container, stdin=stdin, detach_keys=detach_keys)


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
