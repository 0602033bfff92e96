"""Serving the method table to connections: one nursery per connection, a task per call.

Bad input never takes the daemon down: a well-formed message with bad content gets an
error response (or an ``$error`` notification when it has no msgid); bytes that are not
msgpack, or a frame over the limit, close that one connection after an ``$error``
notification. A client that goes away cancels every call it had running.
"""

from __future__ import annotations

import logging
import math
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
    disk_full,
    no_space,
)
from engine.rpc import protocol
from engine.rpc.methods import MethodTable, clip, forget_traceback, structure_params, unstructure

if TYPE_CHECKING:
    from engine.supervisor.app import App

log = logging.getLogger("engine.rpc")

# Calls in flight (running or streaming) one connection may have, and the whole daemon: each
# holds its params and a task, a stream its subscription too. A request beyond either limit
# is answered with ResourceExhausted at once; the connection stays usable.
MAX_CALLS_PER_CONNECTION = 1024
MAX_CALLS = 8192
# An error's details larger than this (msgpack bytes) are left out of its answer.
MAX_ERROR_DETAILS = 4096
# A request frame this large decodes into tens of megabytes of objects; once it is answered,
# the allocator is asked to give the freed memory back (glibc keeps it otherwise), at most
# once per TRIM_INTERVAL seconds.
LARGE_FRAME = 1024 * 1024
TRIM_INTERVAL = 0.5


def _malloc_trim() -> None:
    """Blocking: glibc's malloc_trim(0); nothing where there is no glibc."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass


def bounded_error(error: EngineError) -> dict[str, Any]:
    """The error's wire form, no larger than a client's mistake deserves."""
    wire = error.to_wire()
    wire["message"] = clip(wire["message"])
    if "details" in wire:
        try:
            fits = len(protocol.pack(unstructure(wire["details"]))) <= MAX_ERROR_DETAILS
        except (TypeError, ValueError):
            fits = False
        if not fits:
            wire["details"] = {"truncated": True}
    return wire


class MessageTransport(Protocol):
    """What a connection needs from its transport (unix stream, WebSocket)."""

    def messages(self) -> AsyncIterator[Any]: ...

    @property
    def last_frame_size(self) -> int:
        """Bytes of the message ``messages`` yielded last."""

    async def send(self, data: bytes) -> None: ...

    async def aclose(self) -> None: ...


class StreamTransport:
    """msgpack over a byte stream (unix socket, inherited fd)."""

    def __init__(self, stream: trio.abc.Stream, max_frame: int) -> None:
        self.stream = stream
        self.decoder = protocol.Decoder(max_frame, max_entries=protocol.MAX_REQUEST_ENTRIES)

    @property
    def last_frame_size(self) -> int:
        return self.decoder.last_frame_size

    async def messages(self) -> AsyncIterator[Any]:
        while True:
            data = await self.stream.receive_some(65536)
            if not data:
                return
            for obj in self.decoder.feed(data):
                yield obj
                del obj  # not kept alive while the client is idle

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
                del obj  # a large request must not stay alive until the next one comes
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
            refusal = self._refusal(message)
            if refusal is not None:
                await self.send(protocol.encode_response(message.msgid, refusal.to_wire(), None))
                return
            scope = trio.CancelScope()
            self._calls[message.msgid] = scope
            info = self.server.methods.get(message.method)
            if info is not None and info.input:
                # now, not when the call's task runs: input may follow the request at once
                self._inputs[message.msgid] = StreamInput(self, message.msgid, scope)
            self.server.calls += 1
            large = self.transport.last_frame_size >= LARGE_FRAME
            nursery.start_soon(self._run_call, message, scope, large)
        elif isinstance(message, protocol.Notification):
            self._handle_notification(message)
        # Responses from a client are meaningless here; ignore them.

    def _refusal(self, request: protocol.Request) -> EngineError | None:
        """Why this request cannot be taken now, if it cannot."""
        if request.msgid in self._calls:
            return ProtocolError(f"msgid {request.msgid} is already in use on this connection")
        if len(self._calls) >= MAX_CALLS_PER_CONNECTION:
            return ResourceExhausted(
                f"{request.method} refused: this connection has {len(self._calls)} calls in "
                f"flight, the limit; wait for some to finish or cancel them")
        if self.server.calls >= MAX_CALLS:
            return ResourceExhausted(
                f"{request.method} refused: the daemon has {self.server.calls} calls in flight, "
                "the limit; try again later")
        return None

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

    async def _run_call(self, request: protocol.Request, scope: trio.CancelScope, large: bool) -> None:
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
        except Exception as e:
            error = self._error_answer(request, e)
            forget_traceback(e)  # its frames hold the request's params
        finally:
            if self._calls.pop(request.msgid, None) is not None:
                self.server.calls -= 1
            self._streams.pop(request.msgid, None)
            self._inputs.pop(request.msgid, None)
        try:
            payload = protocol.encode_response(request.msgid, error, unstructure(result))
        except (TypeError, ValueError) as e:
            payload = protocol.encode_response(
                request.msgid, InternalError(f"unencodable result: {e}").to_wire(), None
            )
        await self.send(payload)
        if large:
            del request, result, payload
            await self.server.release_memory()

    def _error_answer(self, request: protocol.Request, e: Exception) -> dict[str, Any]:
        """What the client is told of a failed call. A full disk is ResourceExhausted naming
        the path, also where a handler turned the OSError into another error (a "corrupt
        archive" that was only a failed write) or a nursery grouped it."""
        full = no_space(e)
        if full is not None and not isinstance(e, ResourceExhausted):
            log.warning("%s failed, the disk is full: %s", request.method, full)
            return bounded_error(disk_full(full, self._storage_root()))
        if isinstance(e, EngineError):
            return bounded_error(e)
        log.exception("RPC method %s failed", request.method)  # a bug: report it, keep serving
        return bounded_error(InternalError(
            f"internal error in {request.method}: {type(e).__name__}: {e}; see the daemon's log"))

    def _storage_root(self) -> object:
        layout = getattr(self.server.app, "layout", None)
        return getattr(layout, "root", None)

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
        self.calls = 0  # in flight, over every connection
        self._trim_pending = False
        self._trim_wanted = False
        self._last_trim = -math.inf

    async def release_memory(self) -> None:
        """Return freed memory to the system soon (one trim for a burst of large calls). A
        call that ends while a trim is pending or running asks for one more after it, so
        the last large call of a burst is always followed by a trim."""
        self._trim_wanted = True
        if self._trim_pending:
            return
        self._trim_pending = True
        try:
            while self._trim_wanted:
                self._trim_wanted = False
                await trio.sleep_until(self._last_trim + TRIM_INTERVAL)
                await trio.to_thread.run_sync(_malloc_trim)
                self._last_trim = trio.current_time()
        finally:
            self._trim_pending = False

    async def handle_stream(self, stream: trio.abc.Stream, peer: str = "unix") -> None:
        await self.handle_transport(StreamTransport(stream, self.max_frame), peer)

    async def handle_transport(self, transport: MessageTransport, peer: str) -> None:
        self.connections += 1
        try:
            await Connection(self, transport, peer).serve()
        finally:
            self.connections -= 1
