"""HTTP/1.1 on trio, on h11 (sans-IO): one task per connection. It serves the Docker API
(``engine.dockerapi``) and the CRI's streaming server (``engine.cri.streaming``).

What it does for the handlers, which never see h11:
- keep-alive: requests on one connection are answered in turn;
- request bodies read on demand, with a size cap (``Request.body`` / ``Request.json``);
- streaming responses (chunked): the handler gets a ``write`` function; each chunk is sent
  before the next is produced, so a slow reader slows the producer (backpressure). A client
  that goes away cancels the producer: the socket is watched for EOF while it runs;
- hijacked connections (``Upgrade: tcp`` → 101, or a raw 200 for old clients): the handler
  gets the raw byte stream both ways (docker's attach and exec start).

A handler returns a ``Response``, a ``StreamResponse`` or a ``HijackResponse``; errors are
turned into responses by the caller's ``handle`` function (e.g. ``engine.dockerapi.server``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import attrs
import h11
import trio

from engine.errors import InvalidArgument, ResourceExhausted

log = logging.getLogger("engine.http")

RECEIVE_SIZE = 64 * 1024
MAX_HEADER_BYTES = 64 * 1024  # a request line plus headers (h11's incomplete-event cap)
MAX_JSON_BODY = 16 * 1024 * 1024  # bytes; container/network create bodies are a few KiB
MAX_PIPELINED = 1024 * 1024  # bytes of a next request buffered while a stream is sent
IDLE_TIMEOUT = 300.0  # seconds a kept-alive connection may wait for its next request
# seconds a started request may take to send its head (from its first byte), and each
# later read of its body; a client that stalls mid-request loses its connection. Tests
# shorten it through the environment (a stall test should not wait a minute).
HEAD_TIMEOUT = float(os.environ.get("ENGINE_DOCKER_API_REQUEST_TIMEOUT") or 60.0)
SEND_TIMEOUT = 120.0  # seconds one chunk may take to leave (a reader that stopped reading)

Write = Callable[[bytes], Awaitable[None]]


class BodyTooLarge(ResourceExhausted):
    """A request body over the handler's cap: the client's fault (413), unlike a full disk."""

    http_status = 413


@attrs.define
class Response:
    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    headers: list[tuple[str, str]] = attrs.field(factory=list)


@attrs.define
class StreamResponse:
    """A chunked response produced by ``produce(write)``.

    With ``eager_headers`` the status line and headers go out at once (events, logs -f: the
    client waits for them before reading); otherwise they wait for the first chunk, so an
    error raised before any output still gets its own status code (pull, push)."""

    produce: Callable[[Write], Awaitable[None]]
    content_type: str = "application/json"
    status: int = 200
    eager_headers: bool = False
    headers: list[tuple[str, str]] = attrs.field(factory=list)


class Hijacked:
    """The raw connection after a 101 (or a raw 200): bytes both ways, HTTP is over.
    Several tasks may send (an exec's stdout and stderr): one at a time, in turn."""

    def __init__(self, stream: trio.abc.Stream, initial: bytes) -> None:
        self._stream = stream
        self._initial = initial
        self._sending = trio.StrictFIFOLock()

    async def receive_some(self, max_bytes: int = RECEIVE_SIZE) -> bytes:
        if self._initial:
            data, self._initial = self._initial, b""
            return data
        return bytes(await self._stream.receive_some(max_bytes))

    async def send_all(self, data: bytes) -> None:
        async with self._sending:
            with trio.fail_after(SEND_TIMEOUT):
                await self._stream.send_all(data)


@attrs.define
class HijackResponse:
    """Take the connection over: ``run(hijacked)`` talks raw bytes; the connection closes
    when it returns."""

    run: Callable[[Hijacked], Awaitable[None]]
    content_type: str = "application/vnd.docker.raw-stream"
    # called when the connection could not be taken over (``run`` never runs): what the
    # handler set up for it is undone
    abandon: Callable[[], None] | None = None
    # the protocol named in the 101's ``Upgrade`` (the CRI's streaming server: SPDY/3.1,
    # websocket) and headers of that protocol's handshake; an empty content_type is left out
    upgrade: str = "tcp"
    headers: list[tuple[str, str]] = attrs.field(factory=list)


Reply = Response | StreamResponse | HijackResponse


class Request:
    def __init__(self, conn: _Connection, event: h11.Request) -> None:
        self._conn = conn
        self.method = event.method.decode("ascii", "replace").upper()
        self.target = event.target.decode("latin-1")
        parts = urlsplit(self.target)
        self.path = parts.path
        self.query: dict[str, list[str]] = parse_qs(parts.query, keep_blank_values=True)
        self.headers: dict[str, str] = {}
        for name, value in event.headers:
            key = name.decode("latin-1").lower()
            text = value.decode("latin-1")
            self.headers[key] = f"{self.headers[key]}, {text}" if key in self.headers else text
        self.api_version: tuple[int, int] = (0, 0)  # set by the router
        self.path_params: dict[str, str] = {}

    @property
    def wants_upgrade(self) -> bool:
        return "upgrade" in self.headers

    # --- query parameters (docker's spellings: 1/true/True, 0/false) ------------------------

    def param(self, name: str, default: str = "") -> str:
        values = self.query.get(name)
        return values[-1] if values else default

    def has(self, name: str) -> bool:
        return name in self.query

    def bool_param(self, name: str, default: bool = False) -> bool:
        value = self.param(name, "").strip().lower()
        if value == "":
            return default
        if value in ("1", "true", "yes", "on"):
            return True
        if value in ("0", "false", "no", "off"):
            return False
        raise InvalidArgument(f"invalid value for query parameter {name}: {value!r} (use 1 or 0)")

    def int_param(self, name: str, default: int | None = None) -> int | None:
        value = self.param(name, "").strip()
        if value == "":
            return default
        try:
            return int(value)
        except ValueError:
            raise InvalidArgument(f"invalid value for query parameter {name}: {value!r} (a whole number)") from None

    # --- the body ----------------------------------------------------------------------------

    async def body(self, limit: int = MAX_JSON_BODY) -> bytes:
        return await self._conn.read_body(limit)

    def body_chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives, any size (image archives, cp uploads): the caller writes
        it somewhere rather than holding it."""
        return self._conn.body_chunks()

    async def json(self, *, required: bool = False) -> Any:
        data = await self.body()
        if not data.strip():
            if required:
                raise InvalidArgument("a JSON request body is required")
            return None
        try:
            return json.loads(data)
        except (ValueError, UnicodeDecodeError) as e:
            raise InvalidArgument(f"invalid JSON in the request body: {e}") from None

    async def json_object(self) -> dict[str, Any]:
        doc = await self.json()
        if doc is None:
            return {}
        if not isinstance(doc, dict):
            raise InvalidArgument("the request body must be a JSON object")
        return doc


class _Connection:
    """One client connection: h11's state machine over a trio stream."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADER_BYTES)
        self.initial = b""  # bytes that came after a hijacked request's head
        self.body_refused = False  # a body over its cap: answered, not drained; the connection ends

    async def next_event(self) -> Any:
        while True:
            event = self.h11.next_event()
            if event is not h11.NEED_DATA:
                return event
            data = bytes(await self.stream.receive_some(RECEIVE_SIZE))
            self.h11.receive_data(data)

    async def next_request(self) -> Any:
        """The next request's head: the wait for its first byte is the idle one (None when
        it runs out); from there the whole head must come within HEAD_TIMEOUT."""
        event = self.h11.next_event()
        if event is not h11.NEED_DATA:
            return event
        if self.h11.trailing_data[0]:  # part of a head came already (after the last request)
            with trio.fail_after(HEAD_TIMEOUT):
                return await self.next_event()
        with trio.move_on_after(IDLE_TIMEOUT):
            data = bytes(await self.stream.receive_some(RECEIVE_SIZE))
            self.h11.receive_data(data)
            with trio.fail_after(HEAD_TIMEOUT):
                return await self.next_event()
        return None

    async def send(self, event: Any) -> None:
        data = self.h11.send(event)
        if data:
            with trio.fail_after(SEND_TIMEOUT):
                await self.stream.send_all(data)

    async def read_body(self, limit: int) -> bytes:
        chunks: list[bytes] = []
        size = 0
        while self.h11.their_state is h11.SEND_BODY:
            with trio.fail_after(HEAD_TIMEOUT):
                event = await self.next_event()
            if isinstance(event, h11.Data):
                size += len(event.data)
                if size > limit:
                    self.body_refused = True
                    raise BodyTooLarge(f"the request body is larger than {limit} bytes")
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                break
        return b"".join(chunks)

    async def body_chunks(self) -> AsyncIterator[bytes]:
        while self.h11.their_state is h11.SEND_BODY:
            with trio.fail_after(HEAD_TIMEOUT):
                event = await self.next_event()
            if isinstance(event, h11.Data):
                yield bytes(event.data)
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                break

    async def discard_body(self) -> bool:
        """Skip what is left of the request body; False when the connection cannot go on."""
        try:
            await self.read_body(MAX_JSON_BODY)
        except (ResourceExhausted, trio.TooSlowError, h11.RemoteProtocolError):
            return False
        return self.h11.their_state is h11.DONE

    async def watch_peer(self, gone: trio.CancelScope) -> None:
        """While a stream is sent: read what the client sends (a pipelined next request is
        kept for later) and cancel ``gone`` when it closes the connection."""
        buffered = 0
        while True:
            try:
                data = bytes(await self.stream.receive_some(RECEIVE_SIZE))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            if not data:
                gone.cancel()
                return
            self.h11.receive_data(data)
            buffered += len(data)
            if buffered > MAX_PIPELINED:
                await trio.sleep_forever()  # stop reading; the client waits for our answer


def _headers(items: list[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    return [(k.encode("latin-1"), v.encode("latin-1")) for k, v in items]


async def serve_connection(
    stream: trio.abc.Stream,
    handle: Callable[[Request], Awaitable[Reply]],
    error_reply: Callable[[BaseException, Request | None], Response],
    extra_headers: Callable[[], list[tuple[str, str]]] = list,
) -> None:
    """Answer requests on ``stream`` until the client closes it (or must close it)."""
    conn = _Connection(stream)
    try:
        while True:
            request = None
            try:
                event = await conn.next_request()
                if event is None or isinstance(event, h11.ConnectionClosed):
                    return
                if not isinstance(event, h11.Request):
                    return  # PAUSED or stray data: nothing sensible to answer
                request = Request(conn, event)
                reply = await handle(request)
            except h11.RemoteProtocolError as e:
                # h11 lets a server answer a broken request (even before its head was whole)
                with contextlib.suppress(h11.LocalProtocolError):
                    await _send_simple(conn, error_reply(e, request), extra_headers(), force=True)
                return
            keep_going = await _send_reply(conn, request, reply, error_reply, extra_headers())
            if not keep_going or conn.body_refused:
                return
            if conn.h11.their_state is h11.SEND_BODY and not await conn.discard_body():
                return
            if conn.h11.our_state is not h11.DONE or conn.h11.their_state is not h11.DONE:
                return
            conn.h11.start_next_cycle()
    except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError, h11.LocalProtocolError,
            h11.RemoteProtocolError, ConnectionError):
        return
    except Exception:  # one connection's bug must not take the daemon (and every other client) down
        log.exception("HTTP connection failed")
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(1):
            await stream.aclose()


async def _send_simple(conn: _Connection, response: Response, extra: list[tuple[str, str]],
                       *, force: bool = False) -> None:
    if conn.h11.our_state is not h11.SEND_RESPONSE and not force:
        return  # a response is on its way already (a stream that broke off)
    headers: list[tuple[str, str]] = []
    if response.content_type:
        headers.append(("Content-Type", response.content_type))
    if response.status not in (204, 304):  # these have no body, and say nothing of its length
        headers.append(("Content-Length", str(len(response.body))))
    headers += [*extra, *response.headers]
    await conn.send(h11.Response(status_code=response.status, headers=_headers(headers)))
    if response.body:
        await conn.send(h11.Data(data=response.body))
    await conn.send(h11.EndOfMessage())


async def _send_reply(conn: _Connection, request: Request, reply: Reply,
                      error_reply: Callable[[BaseException, Request | None], Response],
                      extra: list[tuple[str, str]]) -> bool:
    """Send ``reply``; False when the connection is over (hijacked, or broken mid-stream)."""
    if isinstance(reply, Response):
        if request.method == "HEAD":
            reply = attrs.evolve(reply, body=b"")
        await _send_simple(conn, reply, extra)
        return True
    if isinstance(reply, HijackResponse):
        await _hijack(conn, request, reply, extra)
        return False
    return await _send_stream(conn, request, reply, error_reply, extra)


async def _send_stream(conn: _Connection, request: Request, reply: StreamResponse,
                       error_reply: Callable[[BaseException, Request | None], Response],
                       extra: list[tuple[str, str]]) -> bool:
    # The body must be read before the peer is watched (both read the socket).
    if conn.h11.their_state is h11.SEND_BODY and not await conn.discard_body():
        return False
    started = False

    async def start() -> None:
        nonlocal started
        if not started:
            started = True
            headers = [("Content-Type", reply.content_type), *extra, *reply.headers]
            await conn.send(h11.Response(status_code=reply.status, headers=_headers(headers)))

    async def write(data: bytes) -> None:
        await start()
        if data:
            await conn.send(h11.Data(data=data))

    error: Exception | None = None
    try:
        with trio.CancelScope() as gone:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(conn.watch_peer, gone)
                if reply.eager_headers:
                    await start()
                await reply.produce(write)
                nursery.cancel_scope.cancel()
        if gone.cancelled_caught:
            return False  # the client went away; nothing more to say
    except Exception as e:  # noqa: BLE001 - the handler's error becomes the reply
        error = _first(e)
    if error is not None:
        if started:
            log.warning("stream for %s %s broke off: %s", request.method, request.path, error)
            return False
        await _send_simple(conn, error_reply(error, request), extra)
        return True
    await start()
    await conn.send(h11.EndOfMessage())
    return True


def _first(error: Exception) -> Exception:
    """The error a nursery's group carries (the producer's own, not a wrapper)."""
    while isinstance(error, ExceptionGroup):
        error = error.exceptions[0]
    return error


async def _hijack(conn: _Connection, request: Request, reply: HijackResponse,
                  extra: list[tuple[str, str]]) -> None:
    """Switch protocols (101 for ``Upgrade: tcp``; a raw 200 for clients that predate it),
    then hand the raw stream over."""
    try:
        await _switch_protocols(conn, request, reply, extra)
    except BaseException:
        if reply.abandon is not None:
            reply.abandon()
        raise
    await reply.run(Hijacked(conn.stream, conn.initial))


async def _switch_protocols(conn: _Connection, request: Request, reply: HijackResponse,
                            extra: list[tuple[str, str]]) -> None:
    await conn.read_body(MAX_JSON_BODY)  # the handler read it already; this only checks
    if request.wants_upgrade:
        headers = [("Content-Type", reply.content_type)] if reply.content_type else []
        headers += [("Connection", "Upgrade"), ("Upgrade", reply.upgrade), *reply.headers, *extra]
        await conn.send(h11.InformationalResponse(status_code=101, headers=_headers(headers)))
        initial, _closed = conn.h11.trailing_data
        conn.initial = bytes(initial)
    else:
        head = "HTTP/1.1 200 OK\r\n" + "".join(
            f"{k}: {v}\r\n" for k, v in [("Content-Type", reply.content_type), *extra]) + "\r\n"
        with trio.fail_after(SEND_TIMEOUT):
            await conn.stream.send_all(head.encode("latin-1"))
        conn.initial = b""
