"""SPDY/3.1 framing, sans-IO: what kubelet's streaming clients (client-go's ``remotecommand``
and ``portforward`` over moby/spdystream) speak after ``Upgrade: SPDY/3.1``.

``SpdyCodec`` turns received bytes into frames and frames into bytes; the connection's two
zlib contexts (one per direction, seeded with the SPDY/3 dictionary) live in it, because a
header block is compressed against everything compressed before it on the connection.
No I/O and no flow control here: spdystream neither sends nor honours WINDOW_UPDATE.

Frame layout (draft-mbelshe-httpbis-spdy-00, SPDY/3):

    control: |1| version(15) | type(16) | flags(8) | length(24) | payload
    data:    |0| stream-id(31)          | flags(8) | length(24) | payload

A length over the codec's cap is refused (``ProtocolError``): the connection is closed
rather than buffering what a broken or hostile peer claims it will send.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable

import attrs

VERSION = 3
HEADER_SIZE = 8

# control frame types
SYN_STREAM = 1
SYN_REPLY = 2
RST_STREAM = 3
SETTINGS = 4
PING = 6
GOAWAY = 7
HEADERS = 8
WINDOW_UPDATE = 9

FLAG_FIN = 0x01
FLAG_UNIDIRECTIONAL = 0x02

# RST_STREAM status codes
PROTOCOL_ERROR = 1
INVALID_STREAM = 2
REFUSED_STREAM = 3
CANCEL = 5
INTERNAL_ERROR = 6
STREAM_IN_USE = 8
FRAME_TOO_LARGE = 11

# GOAWAY status codes
GOAWAY_OK = 0
GOAWAY_PROTOCOL_ERROR = 1

MAX_FRAME = 1 << 20  # bytes of one frame's payload we accept (client-go writes 32 KiB chunks)
MAX_HEADER_BLOCK = 256 * 1024  # bytes of one decompressed header block
STREAM_ID_MASK = 0x7FFFFFFF


def _dictionary() -> bytes:
    """The SPDY/3 header compression dictionary (spec section 2.6.10.1): length-prefixed
    header names and values, then a run of common strings."""
    words = (
        "options head post put delete trace accept accept-charset accept-encoding "
        "accept-language accept-ranges age allow authorization cache-control connection "
        "content-base content-encoding content-language content-length content-location "
        "content-md5 content-range content-type date etag expect expires from host if-match "
        "if-modified-since if-none-match if-range if-unmodified-since last-modified location "
        "max-forwards pragma proxy-authenticate proxy-authorization range referer retry-after "
        "server te trailer transfer-encoding upgrade user-agent vary via warning "
        "www-authenticate method get status"
    ).split()
    words += ["200 OK", "version", "HTTP/1.1", "url", "public", "set-cookie", "keep-alive", "origin"]
    prefixed = b"".join(struct.pack(">I", len(w)) + w.encode() for w in words)
    tail = (
        "100101201202205206300302303304305306307402405406407408409410411412413414415416417"
        "502504505203 Non-Authoritative Information204 No Content301 Moved Permanently"
        "400 Bad Request401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error"
        "501 Not Implemented503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct "
        "Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,"
        "image/jpg,image/gif,application/xml,application/xhtml+xml,text/plain,"
        "text/javascript,publicprivatemax-age=gzip,deflate,sdchcharset=utf-8charset="
        "iso-8859-1,utf-,*,enq=0."
    )
    return prefixed + tail.encode()


DICTIONARY = _dictionary()

Headers = dict[str, list[str]]  # lower-case names; a value list (NUL-separated on the wire)


class ProtocolError(Exception):
    """The peer broke SPDY framing: the connection cannot go on."""


@attrs.frozen
class DataFrame:
    stream_id: int
    data: bytes
    fin: bool = False


@attrs.frozen
class SynStream:
    stream_id: int
    headers: Headers
    associated_to: int = 0
    priority: int = 0
    fin: bool = False
    unidirectional: bool = False


@attrs.frozen
class SynReply:
    stream_id: int
    headers: Headers = attrs.field(factory=dict)
    fin: bool = False


@attrs.frozen
class RstStream:
    stream_id: int
    status: int


@attrs.frozen
class Settings:
    entries: list[tuple[int, int, int]] = attrs.field(factory=list)  # (flags, id, value)
    clear: bool = False


@attrs.frozen
class Ping:
    ping_id: int


@attrs.frozen
class GoAway:
    last_good_stream_id: int
    status: int = GOAWAY_OK


@attrs.frozen
class HeadersFrame:
    stream_id: int
    headers: Headers
    fin: bool = False


@attrs.frozen
class WindowUpdate:
    stream_id: int
    delta: int


@attrs.frozen
class UnknownControl:
    """A control frame of a type this codec does not know: skipped, as the spec says."""

    frame_type: int


Frame = (DataFrame | SynStream | SynReply | RstStream | Settings | Ping | GoAway | HeadersFrame
         | WindowUpdate | UnknownControl)


def encode_header_block(headers: Headers) -> bytes:
    out = [struct.pack(">I", len(headers))]
    for name, values in headers.items():
        key = name.lower().encode()
        value = b"\x00".join(v.encode() for v in values)
        out += [struct.pack(">I", len(key)), key, struct.pack(">I", len(value)), value]
    return b"".join(out)


def decode_header_block(block: bytes) -> Headers:
    headers: Headers = {}
    view = memoryview(block)
    pos = 0

    def take(n: int) -> bytes:
        nonlocal pos
        if n < 0 or pos + n > len(view):
            raise ProtocolError("truncated header block")
        chunk = bytes(view[pos:pos + n])
        pos += n
        return chunk

    (count,) = struct.unpack(">I", take(4))
    for _ in range(count):
        (name_len,) = struct.unpack(">I", take(4))
        name = take(name_len).decode("utf-8", "replace")
        (value_len,) = struct.unpack(">I", take(4))
        value = take(value_len).decode("utf-8", "replace")
        if not name:
            raise ProtocolError("empty header name")
        headers.setdefault(name.lower(), []).extend(value.split("\x00"))
    return headers


class SpdyCodec:
    """One SPDY connection's framing state: ``receive_data`` then ``frames()`` for what came
    in, ``encode(frame)`` for what goes out."""

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self.max_frame = max_frame
        self._buffer = bytearray()
        self._inflate = zlib.decompressobj(zdict=DICTIONARY)
        self._deflate = zlib.compressobj(zlib.Z_BEST_COMPRESSION, zlib.DEFLATED, 15, zdict=DICTIONARY)

    # --- receiving ----------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        self._buffer += data

    def frames(self) -> Iterable[Frame]:
        """The whole frames received so far, in order (raises ProtocolError)."""
        while True:
            frame = self.next_frame()
            if frame is None:
                return
            yield frame

    def next_frame(self) -> Frame | None:
        if len(self._buffer) < HEADER_SIZE:
            return None
        first, flags_length = struct.unpack_from(">II", self._buffer)
        flags, length = flags_length >> 24, flags_length & 0xFFFFFF
        if length > self.max_frame:
            raise ProtocolError(f"frame of {length} bytes, over the {self.max_frame}-byte limit")
        if len(self._buffer) < HEADER_SIZE + length:
            return None
        payload = bytes(self._buffer[HEADER_SIZE:HEADER_SIZE + length])
        del self._buffer[:HEADER_SIZE + length]
        if not first & 0x80000000:
            return DataFrame(first & STREAM_ID_MASK, payload, bool(flags & FLAG_FIN))
        version, frame_type = (first >> 16) & 0x7FFF, first & 0xFFFF
        if version != VERSION:
            raise ProtocolError(f"unsupported SPDY version {version}")
        return self._control(frame_type, flags, payload)

    def _headers(self, compressed: bytes) -> Headers:
        try:
            block = self._inflate.decompress(compressed, MAX_HEADER_BLOCK)
        except zlib.error as e:
            raise ProtocolError(f"bad compressed header block: {e}") from None
        if self._inflate.unconsumed_tail:
            raise ProtocolError(f"header block over {MAX_HEADER_BLOCK} bytes")
        return decode_header_block(block)

    def _control(self, frame_type: int, flags: int, payload: bytes) -> Frame:
        def need(size: int, exact: bool = True) -> None:
            if len(payload) < size or (exact and len(payload) != size):
                raise ProtocolError(f"control frame {frame_type} with a {len(payload)}-byte payload")

        fin = bool(flags & FLAG_FIN)
        if frame_type == SYN_STREAM:
            need(10, exact=False)
            stream_id, assoc, prio = struct.unpack_from(">IIB", payload)
            return SynStream(stream_id & STREAM_ID_MASK, self._headers(payload[10:]), assoc & STREAM_ID_MASK,
                             prio >> 5, fin, bool(flags & FLAG_UNIDIRECTIONAL))
        if frame_type == SYN_REPLY:
            need(4, exact=False)
            (stream_id,) = struct.unpack_from(">I", payload)
            return SynReply(stream_id & STREAM_ID_MASK, self._headers(payload[4:]), fin)
        if frame_type == HEADERS:
            need(4, exact=False)
            (stream_id,) = struct.unpack_from(">I", payload)
            return HeadersFrame(stream_id & STREAM_ID_MASK, self._headers(payload[4:]), fin)
        if frame_type == RST_STREAM:
            need(8)
            stream_id, status = struct.unpack(">II", payload)
            return RstStream(stream_id & STREAM_ID_MASK, status)
        if frame_type == SETTINGS:
            need(4, exact=False)
            (count,) = struct.unpack_from(">I", payload)
            need(4 + 8 * count)
            entries = []
            for i in range(count):
                flag_id, value = struct.unpack_from(">II", payload, 4 + 8 * i)
                entries.append((flag_id >> 24, flag_id & 0xFFFFFF, value))
            return Settings(entries, clear=fin)
        if frame_type == PING:
            need(4)
            return Ping(struct.unpack(">I", payload)[0])
        if frame_type == GOAWAY:
            need(8)
            last, status = struct.unpack(">II", payload)
            return GoAway(last & STREAM_ID_MASK, status)
        if frame_type == WINDOW_UPDATE:
            need(8)
            stream_id, delta = struct.unpack(">II", payload)
            return WindowUpdate(stream_id & STREAM_ID_MASK, delta & STREAM_ID_MASK)
        return UnknownControl(frame_type)

    # --- sending ------------------------------------------------------------------------------

    def _compress(self, headers: Headers) -> bytes:
        return self._deflate.compress(encode_header_block(headers)) + self._deflate.flush(zlib.Z_SYNC_FLUSH)

    def encode(self, frame: Frame) -> bytes:
        if isinstance(frame, DataFrame):
            if len(frame.data) > 0xFFFFFF:
                raise ValueError("a data frame holds at most 16 MiB - 1")
            return struct.pack(">II", frame.stream_id & STREAM_ID_MASK,
                               (FLAG_FIN if frame.fin else 0) << 24 | len(frame.data)) + frame.data
        flags = 0
        if isinstance(frame, SynStream):
            flags = (FLAG_FIN if frame.fin else 0) | (FLAG_UNIDIRECTIONAL if frame.unidirectional else 0)
            payload = struct.pack(">IIBB", frame.stream_id, frame.associated_to, frame.priority << 5, 0)
            payload += self._compress(frame.headers)
            kind = SYN_STREAM
        elif isinstance(frame, SynReply):
            flags = FLAG_FIN if frame.fin else 0
            payload = struct.pack(">I", frame.stream_id) + self._compress(frame.headers)
            kind = SYN_REPLY
        elif isinstance(frame, HeadersFrame):
            flags = FLAG_FIN if frame.fin else 0
            payload = struct.pack(">I", frame.stream_id) + self._compress(frame.headers)
            kind = HEADERS
        elif isinstance(frame, RstStream):
            payload, kind = struct.pack(">II", frame.stream_id, frame.status), RST_STREAM
        elif isinstance(frame, Settings):
            flags = FLAG_FIN if frame.clear else 0
            payload = struct.pack(">I", len(frame.entries)) + b"".join(
                struct.pack(">II", f << 24 | i, v) for f, i, v in frame.entries)
            kind = SETTINGS
        elif isinstance(frame, Ping):
            payload, kind = struct.pack(">I", frame.ping_id), PING
        elif isinstance(frame, GoAway):
            payload, kind = struct.pack(">II", frame.last_good_stream_id, frame.status), GOAWAY
        elif isinstance(frame, WindowUpdate):
            payload, kind = struct.pack(">II", frame.stream_id, frame.delta), WINDOW_UPDATE
        else:
            raise ValueError(f"cannot encode {frame!r}")
        head = struct.pack(">HHI", 0x8000 | VERSION, kind, flags << 24 | len(payload))
        return head + payload
