"""Serving the method table to connections: one nursery per connection, a task per call.

Bad input never takes the daemon down: a well-formed message with bad content gets an
error response (or an ``$error`` notification when it has no msgid); bytes that are not
msgpack, or a frame over the limit, close that one connection after an ``$error``
notification. A client that goes away cancels every call it had running.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Protocol

import attrs
import trio

from engine.errors import (
    Cancelled,
    EngineError,
    InternalError,
    MethodNotFound,
    ProtocolError,
    ResourceExhausted,
)
from engine.rpc import protocol
from engine.rpc.methods import MethodTable, structure_params, unstructure

if TYPE_CHECKING:
    from engine.supervisor.app import App

log = logging.getLogger("engine.rpc")


class MessageTransport(Protocol):
    """What a connection needs from its transport (unix stream, WebSocket)."""

    def messages(self) -> AsyncIterator[Any]: ...

    async def send(self, data: bytes) -> None: ...

    async def aclose(self) -> None: ...


class StreamTransport:
    """msgpack over a byte stream (unix socket, inherited fd)."""

    def __init__(self, stream: trio.abc.Stream, max_frame: int) -> None:
        self.stream = stream
        self.decoder = protocol.Decoder(max_frame)

    async def messages(self) -> AsyncIterator[Any]:
        while True:
            data = await self.stream.receive_some(65536)
            if not data:
                return
            for obj in self.decoder.feed(data):
                yield obj

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def aclose(self) -> None:
        await self.stream.aclose()


@attrs.define
class CallContext:
    """What a handler may know about the call it serves."""

    app: App
    peer: str
    msgid: int
    method: str


class StreamSender:
    """Items of one streaming call, sent under the client's credit."""

    def __init__(self, conn: Connection, msgid: int) -> None:
        self._conn = conn
        self._msgid = msgid
        self._credit = protocol.STREAM_WINDOW
        self._credit_changed = trio.Event()
        self.sent = 0

    def grant(self, n: int) -> None:
        self._credit += max(0, n)
        self._credit_changed.set()
        self._credit_changed = trio.Event()

    async def send(self, item: Any) -> None:
        while self._credit <= 0:
            await self._credit_changed.wait()
        self._credit -= 1
        self.sent += 1
        await self._conn.send(
            protocol.encode_notification(protocol.STREAM_ITEM, [self._msgid, unstructure(item)])
        )


class StreamInput:
    """Items the client sends to one call (``$stream.in``), read by its handler under the
    server's credit: at most ``STREAM_WINDOW`` wait here, and each item leaving the queue
    counts towards the next ``$stream.in_ack``. A client that sends beyond its credit, or an
    item over ``MAX_INPUT_ITEM`` bytes, fails the call (see ``violation``)."""

    def __init__(self, conn: Connection, msgid: int, scope: trio.CancelScope) -> None:
        self._conn = conn
        self._msgid = msgid
        self._scope = scope
        self._send, self._receive = trio.open_memory_channel[Any](protocol.STREAM_WINDOW)
        self._consumed = 0
        self.received = 0
        self.violation: EngineError | None = None

    def deliver(self, item: Any) -> None:
        """From the connection's read loop: queue an item without waiting."""
        if self.violation is not None:
            return
        size = _item_bytes(item)
        if size > protocol.MAX_INPUT_ITEM:
            self._violate(f"a stream input item of {size} bytes is over the "
                          f"{protocol.MAX_INPUT_ITEM}-byte limit; split it")
            return
        try:
            self._send.send_nowait(item)
        except trio.WouldBlock:
            self._violate(f"the client sent stream input beyond its credit of "
                          f"{protocol.STREAM_WINDOW} un-acknowledged items")

    def _violate(self, message: str) -> None:
        self.violation = ResourceExhausted(message)
        self._scope.cancel()

    async def receive(self) -> Any:
        """The next item; waits for the client."""
        item = await self._receive.receive()
        self.received += 1
        self._consumed += 1
        if self._consumed >= protocol.STREAM_WINDOW // 2:
            n, self._consumed = self._consumed, 0
            await self._conn.send(protocol.encode_notification(protocol.STREAM_IN_ACK, [self._msgid, n]))
        return item

    def __aiter__(self) -> StreamInput:
        return self

    async def __anext__(self) -> Any:
        return await self.receive()


def _item_bytes(item: Any) -> int:
    """Bytes of data an input item carries (its strings and byte strings, one level deep)."""
    if isinstance(item, bytes | str):
        return len(item)
    if isinstance(item, dict):
        return sum(len(v) for v in item.values() if isinstance(v, bytes | str))
    if isinstance(item, list):
        return sum(len(v) for v in item if isinstance(v, bytes | str))
    return 0


class Connection:
    def __init__(self, server: RPCServer, transport: MessageTransport, peer: str) -> None:
        self.server = server
        self.transport = transport
        self.peer = peer
        self._send_lock = trio.Lock()
        self._calls: dict[int, trio.CancelScope] = {}
        self._streams: dict[int, StreamSender] = {}
        self._inputs: dict[int, StreamInput] = {}

    async def send(self, data: bytes) -> None:
        async with self._send_lock:
            await self.transport.send(data)

    async def serve(self) -> None:
        try:
            async with trio.open_nursery() as nursery:
                try:
                    await self._read_loop(nursery)
                finally:
                    # The client is gone (or unreadable): its calls have no one to answer.
                    nursery.cancel_scope.cancel()
        except* (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await self.transport.aclose()

    async def _read_loop(self, nursery: trio.Nursery) -> None:
        try:
            async for obj in self.transport.messages():
                await self._handle_object(obj, nursery)
        except (ProtocolError, ResourceExhausted) as e:
            log.warning("closing RPC connection from %s: %s", self.peer, e)
            with trio.move_on_after(1):
                await self._send_error_event(e)
        except (trio.BrokenResourceError, trio.ClosedResourceError, ConnectionError):
            pass

    async def _send_error_event(self, error: EngineError) -> None:
        try:
            await self.send(protocol.encode_notification(protocol.ERROR_EVENT, [error.to_wire()]))
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass

    async def _handle_object(self, obj: Any, nursery: trio.Nursery) -> None:
        try:
            message = protocol.parse_message(obj)
        except ProtocolError as e:
            msgid = e.details.get("msgid")
            if msgid is None and isinstance(obj, list) and len(obj) > 1 and obj[0] == 0:
                msgid = obj[1] if isinstance(obj[1], int) else None
            if isinstance(msgid, int):
                await self.send(protocol.encode_response(msgid, e.to_wire(), None))
            else:
                await self._send_error_event(e)
            return
        if isinstance(message, protocol.Request):
            if message.msgid in self._calls:
                err = ProtocolError(f"msgid {message.msgid} is already in use on this connection")
                await self.send(protocol.encode_response(message.msgid, err.to_wire(), None))
                return
            scope = trio.CancelScope()
            self._calls[message.msgid] = scope
            info = self.server.methods.get(message.method)
            if info is not None and info.input:
                # now, not when the call's task runs: input may follow the request at once
                self._inputs[message.msgid] = StreamInput(self, message.msgid, scope)
            nursery.start_soon(self._run_call, message, scope)
        elif isinstance(message, protocol.Notification):
            self._handle_notification(message)
        # Responses from a client are meaningless here; ignore them.

    def _handle_notification(self, note: protocol.Notification) -> None:
        params = note.params
        msgid = params[0] if params and isinstance(params[0], int) else None
        if note.method == protocol.STREAM_ACK and msgid is not None:
            n = params[1] if len(params) > 1 and isinstance(params[1], int) else 1
            if sender := self._streams.get(msgid):
                sender.grant(n)
        elif note.method == protocol.STREAM_IN and msgid is not None and len(params) > 1:
            if receiver := self._inputs.get(msgid):
                receiver.deliver(params[1])
        elif note.method == protocol.CANCEL and msgid is not None:
            if scope := self._calls.get(msgid):
                scope.cancel()

    async def _run_call(self, request: protocol.Request, scope: trio.CancelScope) -> None:
        error: dict[str, Any] | None = None
        result: Any = None
        try:
            with scope:
                result = await self._dispatch(request)
            if scope.cancelled_caught:
                receiver = self._inputs.get(request.msgid)
                if receiver is not None and receiver.violation is not None:
                    error = receiver.violation.to_wire()
                else:
                    error = Cancelled(f"{request.method} was cancelled by the client").to_wire()
        except EngineError as e:
            error = e.to_wire()
        except Exception as e:  # a bug: report it, keep serving
            log.exception("RPC method %s failed", request.method)
            error = InternalError(
                f"internal error in {request.method}: {type(e).__name__}: {e}; "
                "see the daemon's log"
            ).to_wire()
        finally:
            self._calls.pop(request.msgid, None)
            self._streams.pop(request.msgid, None)
            self._inputs.pop(request.msgid, None)
        try:
            payload = protocol.encode_response(request.msgid, error, unstructure(result))
        except (TypeError, ValueError) as e:
            payload = protocol.encode_response(
                request.msgid, InternalError(f"unencodable result: {e}").to_wire(), None
            )
        await self.send(payload)

    async def _dispatch(self, request: protocol.Request) -> Any:
        info = self.server.methods.get(request.method)
        if info is None:
            raise MethodNotFound(
                f"unknown method {request.method!r}; `rpc.describe` lists the methods"
            )
        params: Any = request.params
        if info.params_type is not None:
            params = structure_params(request.params, info.params_type, request.method)
        ctx = CallContext(self.server.app, self.peer, request.msgid, request.method)
        if info.stream:
            sender = StreamSender(self, request.msgid)
            self._streams[request.msgid] = sender
            if info.input:
                return await info.handler(ctx, params, sender, self._inputs[request.msgid])
            return await info.handler(ctx, params, sender)
        return await info.handler(ctx, params)


class RPCServer:
    def __init__(self, methods: MethodTable, app: Any, *, max_frame: int = protocol.MAX_FRAME):
        self.methods = methods
        self.app = app
        self.max_frame = max_frame
        self.connections = 0

    async def handle_stream(self, stream: trio.abc.Stream, peer: str = "unix") -> None:
        await self.handle_transport(StreamTransport(stream, self.max_frame), peer)

    async def handle_transport(self, transport: MessageTransport, peer: str) -> None:
        self.connections += 1
        try:
            await Connection(self, transport, peer).serve()
        finally:
            self.connections -= 1
