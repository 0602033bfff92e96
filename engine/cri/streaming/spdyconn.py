"""A SPDY/3.1 server connection on trio, over a hijacked HTTP connection (``spdy.SpdyCodec``
does the framing).

One reader task turns frames into per-stream data: the client opens every stream
(SYN_STREAM); ``accept`` answers SYN_REPLY, ``refuse`` RST_STREAM. A stream's data waits in a
small bounded queue, so a slow consumer slows the reader (and the client, through TCP).
PINGs from the client are echoed (client-go pings every few seconds); SETTINGS,
WINDOW_UPDATE and HEADERS are ignored, as spdystream ignores them. A framing error or a
frame over the size cap ends the connection.
"""

from __future__ import annotations

import logging
from typing import Any

import trio

from engine.cri.streaming import spdy

log = logging.getLogger("engine.cri.streaming")

RECEIVE_SIZE = 64 * 1024
CHUNK = 32 * 1024  # bytes per outgoing data frame (client-go's own write size)
INBOX_FRAMES = 16  # data frames queued per stream before the reader waits
MAX_STREAMS = 1024  # streams a connection may open in all (a session needs 2 to 5 each)
SEND_TIMEOUT = 120.0  # seconds one frame may take to leave (a client that stopped reading)
# seconds without a frame from the client before the connection is dropped (kubelet's
# StreamIdleTimeout; client-go pings every 5 s, so only a dead client stays that quiet)
IDLE_TIMEOUT = 4 * 3600.0


class SpdyStream:
    """One client-opened stream: its headers, the data the client sends, and ours."""

    def __init__(self, conn: SpdyConnection, stream_id: int, headers: spdy.Headers, fin: bool) -> None:
        self.conn = conn
        self.id = stream_id
        self.headers = headers
        self._inbox_send, self._inbox = trio.open_memory_channel[bytes](INBOX_FRAMES)
        self.remote_closed = False
        self.local_closed = False
        self.reset = False
        self.discard = False  # data on it is dropped (the error stream: the client only reads)
        if fin:
            self._remote_fin()

    def header(self, name: str) -> str:
        values = self.headers.get(name.lower())
        return values[0] if values else ""

    async def _deliver(self, data: bytes) -> None:
        if data and not self.discard and not self.remote_closed:
            try:
                await self._inbox_send.send(data)
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                pass

    def _remote_fin(self) -> None:
        self.remote_closed = True
        self._inbox_send.close()

    def drop_input(self) -> None:
        """Nobody reads this stream any more: what comes on it is dropped (a reader blocked
        on its full queue goes on)."""
        self.discard = True
        self._inbox.close()

    async def receive(self) -> bytes:
        """The next data the client sent; b"" once it finished (or reset) the stream."""
        try:
            return await self._inbox.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            return b""

    async def send(self, data: bytes) -> None:
        if self.local_closed or self.reset:
            return
        view = memoryview(data)
        for start in range(0, len(view), CHUNK):
            await self.conn.send_frame(spdy.DataFrame(self.id, bytes(view[start:start + CHUNK])))

    async def close(self) -> None:
        """Half-close: we send no more (an empty data frame with FIN)."""
        if self.local_closed or self.reset:
            return
        self.local_closed = True
        await self.conn.send_frame(spdy.DataFrame(self.id, b"", fin=True))

    async def send_reset(self, status: int = spdy.CANCEL) -> None:
        if self.reset:
            return
        self.reset = True
        self._remote_fin()
        await self.conn.send_frame(spdy.RstStream(self.id, status))


class SpdyConnection:
    """The server side of one SPDY connection. ``run`` reads until the client goes;
    ``new_streams`` yields the streams the client opens."""

    def __init__(self, transport: Any) -> None:
        self.transport = transport  # receive_some / send_all (engine.httpserver.Hijacked)
        self.codec = spdy.SpdyCodec()
        self.streams: dict[int, SpdyStream] = {}
        self._last_stream_id = 0
        self._opened = 0
        self._new_send, self.new_streams = trio.open_memory_channel[SpdyStream](64)
        self._send_lock = trio.StrictFIFOLock()
        self.closed = trio.Event()  # the client went away (EOF, reset, or a framing error)
        self.going_away = False
        self.error = ""

    async def send_frame(self, frame: spdy.Frame) -> None:
        if self.closed.is_set() and not isinstance(frame, spdy.GoAway):
            return
        async with self._send_lock:
            data = self.codec.encode(frame)  # under the lock: header compression is ordered
            try:
                with trio.fail_after(SEND_TIMEOUT):
                    await self.transport.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError, OSError):
                self._close()

    async def accept(self, stream: SpdyStream) -> None:
        await self.send_frame(spdy.SynReply(stream.id, {}))

    async def refuse(self, stream: SpdyStream, status: int = spdy.REFUSED_STREAM) -> None:
        self.streams.pop(stream.id, None)
        await stream.send_reset(status)

    async def go_away(self) -> None:
        if not self.going_away:
            self.going_away = True
            await self.send_frame(spdy.GoAway(self._last_stream_id))

    def _close(self) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        for stream in self.streams.values():
            stream._remote_fin()
        self._new_send.close()

    async def run(self) -> None:
        """Read frames until the client closes the connection or breaks the protocol."""
        try:
            while not self.closed.is_set():
                data = b""
                with trio.move_on_after(IDLE_TIMEOUT) as idle:
                    try:
                        data = await self.transport.receive_some(RECEIVE_SIZE)
                    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                        pass
                if idle.cancelled_caught:
                    log.info("SPDY client idle for %.0f s: connection dropped", IDLE_TIMEOUT)
                if not data:
                    return
                self.codec.receive_data(data)
                for frame in self.codec.frames():
                    await self._handle(frame)
        except spdy.ProtocolError as e:
            self.error = str(e)
            log.info("SPDY client broke the protocol: %s", e)
            await self.send_frame(spdy.GoAway(self._last_stream_id, spdy.GOAWAY_PROTOCOL_ERROR))
        finally:
            self._close()

    async def _handle(self, frame: spdy.Frame) -> None:
        if isinstance(frame, spdy.DataFrame):
            stream = self.streams.get(frame.stream_id)
            if stream is None:
                return  # a stream already gone (reset, or finished): its data is dropped
            await stream._deliver(frame.data)
            if frame.fin:
                stream._remote_fin()
        elif isinstance(frame, spdy.SynStream):
            await self._open(frame)
        elif isinstance(frame, spdy.RstStream):
            stream = self.streams.pop(frame.stream_id, None)
            if stream is not None:
                stream.reset = True
                stream._remote_fin()
        elif isinstance(frame, spdy.Ping):
            if frame.ping_id % 2 == 1:  # the client's own (ours would be even): echo it
                await self.send_frame(frame)
        elif isinstance(frame, spdy.GoAway):
            self.going_away = True
        # SETTINGS, WINDOW_UPDATE, HEADERS, unknown control frames: nothing to do

    async def _open(self, frame: spdy.SynStream) -> None:
        if frame.stream_id % 2 == 0 or frame.stream_id <= self._last_stream_id:
            # ids the client may not use (even: the server's) or reused ones
            await self.send_frame(spdy.RstStream(frame.stream_id, spdy.PROTOCOL_ERROR))
            return
        self._last_stream_id = frame.stream_id
        if self.going_away or self._opened >= MAX_STREAMS:
            await self.send_frame(spdy.RstStream(frame.stream_id, spdy.REFUSED_STREAM))
            return
        self._opened += 1
        stream = SpdyStream(self, frame.stream_id, frame.headers, frame.fin)
        self.streams[frame.stream_id] = stream
        try:
            await self._new_send.send(stream)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass

    def forget(self, stream: SpdyStream) -> None:
        self.streams.pop(stream.id, None)
