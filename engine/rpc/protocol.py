"""msgpack-RPC message shapes, sans I/O (no trio, no attrs: the sync client imports this and engctl
must start fast).

Messages (https://github.com/msgpack-rpc/msgpack-rpc/blob/master/spec.md):
    request       [0, msgid, method, params]      params is always [ {named fields} ]
    response      [1, msgid, error, result]       error is nil or {code, message, details?}
    notification  [2, method, params]

Streaming convention (logs -f, events, pull progress, attach):
    A streaming method sends its items as notifications
        [2, "$stream.item", [msgid, item]]
    and ends the stream with its ordinary response [1, msgid, error, result].
    Backpressure is credit based: the server has ``STREAM_WINDOW`` credits per stream and
    stops sending when they run out; the client grants more with
        [2, "$stream.ack", [msgid, n]]
    after it has consumed ``n`` items. The client cancels a call (streaming or not) with
        [2, "$cancel", [msgid]]
    and a closed connection cancels every call on it.

Client-to-server streams (stdin and window sizes of attach, run -i, exec -i): a method
that takes input (``rpc.describe``: ``"input": true``) reads items the client sends as
        [2, "$stream.in", [msgid, item]]
    under the same credit scheme the other way round: the client may have ``STREAM_WINDOW``
    items un-acknowledged; the server grants more with
        [2, "$stream.in_ack", [msgid, n]]
    once it has consumed ``n`` of them. An item beyond the credit, or one holding more than
    ``MAX_INPUT_ITEM`` bytes, fails the call (``resource_exhausted``): the daemon never holds
    more than window x item size of a client's input. Input for a call that has ended, or
    takes none, is dropped (the client may race the end of the call).

Framing: msgpack is self-delimiting; a message larger than ``MAX_FRAME`` bytes is a protocol
error and the connection is closed.
"""

from __future__ import annotations

from engine.errors import ProtocolError, ResourceExhausted

# engctl's client imports this module on its start-up path, which has a budget of a few
# milliseconds: typing (~7 ms), msgpack (~3 ms: datetime, collections) and collections
# are imported only where needed. Type checkers see NamedTuple message classes; at run time
# they are equivalent tuple classes.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator
    from types import ModuleType
    from typing import Any, NamedTuple

REQUEST = 0
RESPONSE = 1
NOTIFICATION = 2

MAX_FRAME = 16 * 1024 * 1024
STREAM_WINDOW = 64
MAX_MSGID = 2**32 - 1

STREAM_ITEM = "$stream.item"
STREAM_ACK = "$stream.ack"
STREAM_IN = "$stream.in"
STREAM_IN_ACK = "$stream.in_ack"
MAX_INPUT_ITEM = 64 * 1024  # bytes of data in one client-to-server item
CANCEL = "$cancel"
ERROR_EVENT = "$error"


if TYPE_CHECKING:

    class Request(NamedTuple):
        msgid: int
        method: str
        params: dict[str, Any]

    class Response(NamedTuple):
        msgid: int
        error: dict[str, Any] | None
        result: Any

    class Notification(NamedTuple):
        method: str
        params: list[Any]

else:

    class _Message(tuple):
        """What collections.namedtuple makes, for the few features messages use."""

        __slots__ = ()
        _fields: tuple[str, ...] = ()

        def __new__(cls, *args, **kwargs):
            try:
                values = args + tuple(kwargs.pop(name) for name in cls._fields[len(args) :])
            except KeyError as e:
                raise TypeError(f"{cls.__name__}() missing field {e}") from None
            if kwargs or len(values) != len(cls._fields):
                raise TypeError(f"{cls.__name__}() takes the fields {', '.join(cls._fields)}")
            return tuple.__new__(cls, values)

        def __getnewargs__(self):
            return tuple(self)

        def __repr__(self):
            fields = ", ".join(f"{n}={v!r}" for n, v in zip(self._fields, self, strict=True))
            return f"{type(self).__name__}({fields})"

    def _message_class(name, fields):
        namespace = {"__slots__": (), "_fields": fields, "__match_args__": fields}
        for index, field in enumerate(fields):
            namespace[field] = property(lambda self, i=index: self[i], doc=f"Alias for field {index}")
        return type(name, (_Message,), namespace)

    Request = _message_class("Request", ("msgid", "method", "params"))
    Response = _message_class("Response", ("msgid", "error", "result"))
    Notification = _message_class("Notification", ("method", "params"))


Message = Request | Response | Notification


def _msgpack() -> ModuleType:
    import msgpack  # on first use: see the note at the top

    return msgpack


def pack(obj: Any) -> bytes:
    return _msgpack().packb(obj, use_bin_type=True, datetime=False)  # type: ignore[no-any-return]


def encode_request(msgid: int, method: str, params: dict[str, Any] | None = None, *,
                   small: bool = False) -> bytes:
    return (pack_small if small else pack)([REQUEST, msgid, method, [params or {}]])


def encode_response(msgid: int, error: dict[str, Any] | None, result: Any) -> bytes:
    return pack([RESPONSE, msgid, error, result])


def encode_notification(method: str, params: list[Any], *, small: bool = False) -> bytes:
    return (pack_small if small else pack)([NOTIFICATION, method, params])


def _request_params(msgid: int, raw: Any) -> dict[str, Any]:
    if raw is None or raw == []:
        return {}
    if isinstance(raw, list) and len(raw) == 1 and isinstance(raw[0], dict):
        return raw[0]
    if isinstance(raw, dict):  # lenient: a bare map
        return raw
    raise ProtocolError(
        "params must be an array holding one map of named fields, e.g. [{\"id\": \"web\"}]",
        msgid=msgid,
    )


def parse_message(obj: Any) -> Message:
    """Validate one decoded msgpack object as an RPC message."""
    if not isinstance(obj, list | tuple) or not obj:
        raise ProtocolError(f"message must be a non-empty array, got {type(obj).__name__}")
    kind = obj[0]
    if kind == REQUEST:
        if len(obj) != 4:
            raise ProtocolError("request must be [0, msgid, method, params]")
        _, msgid, method, params = obj
        if not isinstance(msgid, int) or isinstance(msgid, bool) or not 0 <= msgid <= MAX_MSGID:
            raise ProtocolError("request msgid must be an unsigned 32-bit integer")
        if not isinstance(method, str):
            raise ProtocolError("request method must be a string", msgid=msgid)
        return Request(msgid, method, _request_params(msgid, params))
    if kind == RESPONSE:
        if len(obj) != 4 or not isinstance(obj[1], int):
            raise ProtocolError("response must be [1, msgid, error, result]")
        return Response(obj[1], obj[2], obj[3])
    if kind == NOTIFICATION:
        if len(obj) != 3 or not isinstance(obj[1], str):
            raise ProtocolError("notification must be [2, method, params]")
        params = obj[2] if isinstance(obj[2], list) else [obj[2]]
        return Notification(obj[1], params)
    raise ProtocolError(f"unknown message type {kind!r}: expected 0, 1 or 2")


class Decoder:
    """Feed bytes, get messages. Raises ``ResourceExhausted`` for an oversized frame and
    ``ProtocolError`` for bytes that are not msgpack; the connection cannot recover from
    either, so the caller closes it."""

    def __init__(self, max_frame: int = MAX_FRAME, *, max_entries: int | None = None) -> None:
        self.max_frame = max_frame
        # A server refuses maps and arrays with more entries than any request needs: a
        # frame of a few MB could otherwise unpack into a hundred MB of objects.
        self.max_entries = max_entries
        self._msgpack = _msgpack()
        self._new_unpacker()
        self.last_frame_size = 0  # bytes of the message yielded last

    def _new_unpacker(self) -> None:
        self._unpacker = self._msgpack.Unpacker(
            raw=False,
            strict_map_key=True,
            max_buffer_size=self.max_frame,
            use_list=True,
            timestamp=0,
            **({"max_map_len": self.max_entries, "max_array_len": self.max_entries}
               if self.max_entries is not None else {}),
        )
        self._frame_start = 0
        self._fed = 0
        self._buffer_grown = False

    def feed(self, data: bytes | bytearray) -> Iterator[Any]:
        msgpack = self._msgpack
        if self._buffer_grown and self._frame_start == self._fed:
            # The unpacker's buffer never shrinks: after a large frame, with nothing
            # pending, a fresh one keeps an idle connection from holding megabytes.
            self._new_unpacker()
        self._fed += len(data)
        self._buffer_grown = self._buffer_grown or self._fed - self._frame_start > SMALL_FRAME
        try:
            self._unpacker.feed(data)
        except msgpack.BufferFull:
            raise ResourceExhausted(
                f"message larger than the {self.max_frame}-byte frame limit"
            ) from None
        while True:
            try:
                obj = next(self._unpacker)
            except StopIteration:
                return
            except (msgpack.ExtraData, msgpack.FormatError, msgpack.StackError, ValueError) as e:
                raise ProtocolError(f"unreadable msgpack data: {_reason(msgpack, e)}") from None
            end = self._unpacker.tell()
            self.last_frame_size = end - self._frame_start
            self._frame_start = end
            yield obj
            del obj  # a suspended generator must not keep the last message alive


# The most entries a map or an array in a request may hold (the server's decoders): far more
# than any method's params (a `cmd`, an `env`, labels), far less than what pins memory.
MAX_REQUEST_ENTRIES = 65536

# msgpack's C unpacker keeps a fixed stack: arrays and maps nest at most this deep.
MSGPACK_MAX_DEPTH = 1024


def _reason(msgpack: ModuleType, e: Exception) -> str:
    """What was wrong, in words: msgpack's errors of this kind carry no message."""
    if isinstance(e, msgpack.StackError):
        return f"arrays/maps nested deeper than {MSGPACK_MAX_DEPTH} levels"
    if isinstance(e, msgpack.FormatError):
        return "a byte that starts no msgpack value (such as 0xc1)"
    text = str(e)
    if "exceeds max_map_len" in text or "exceeds max_array_len" in text:
        count = text.split()[0]
        return (f"a map or array of {count} entries, more than the {MAX_REQUEST_ENTRIES} a "
                "request may hold")
    return text or type(e).__name__


# --- Small frames without msgpack ------------------------------------------------------------
# engctl sends a request or two and reads a few small answers per run; importing msgpack
# would cost it ~3 ms, a fifth of its start-up budget. These encode exactly the bytes
# msgpack.packb(use_bin_type=True) would (tests/cli checks it) and decode what Decoder
# would. Anything unusual (ext types, odd values, deep nesting) goes to msgpack itself, and
# so does every frame that is large or split across reads, which msgpack reassembles without
# re-reading: the Python code only ever sees up to SMALL_FRAME bytes at a time.

SMALL_FRAME = 64 * 1024
_SMALL_DEPTH = 64


class _NotSmall(Exception):
    """Leave this value or these bytes to msgpack."""


class _Incomplete(Exception):
    """The buffer ends inside a message."""


def pack_small(obj: Any) -> bytes:
    """``pack(obj)``, in Python for the plain values of requests."""
    out = bytearray()
    try:
        _pack_value(out, obj, 0)
    except _NotSmall:
        return pack(obj)
    return bytes(out)


def _pack_value(out: bytearray, obj: Any, depth: int) -> None:
    # Exact types only: msgpack gives some subclasses (ExtType is a tuple) their own encoding.
    kind = type(obj)
    if depth > _SMALL_DEPTH:
        raise _NotSmall
    if obj is None:
        out.append(0xC0)
    elif kind is bool:
        out.append(0xC3 if obj else 0xC2)
    elif kind is int:
        _pack_int(out, obj)
    elif kind is str:
        try:
            data = obj.encode("utf-8")
        except UnicodeEncodeError:
            raise _NotSmall from None
        _pack_header(out, len(data), 0xA0, 32, (0xD9, 0xDA, 0xDB))
        out += data
    elif kind is bytes or kind is bytearray:
        _pack_header(out, len(obj), None, 0, (0xC4, 0xC5, 0xC6))
        out += obj
    elif kind is float:
        import struct

        out += b"\xcb" + struct.pack(">d", obj)
    elif kind is list or kind is tuple:
        _pack_header(out, len(obj), 0x90, 16, (None, 0xDC, 0xDD))
        for item in obj:
            _pack_value(out, item, depth + 1)
    elif kind is dict:
        _pack_header(out, len(obj), 0x80, 16, (None, 0xDE, 0xDF))
        for key, value in obj.items():
            _pack_value(out, key, depth + 1)
            _pack_value(out, value, depth + 1)
    else:
        raise _NotSmall


def _pack_header(out: bytearray, n: int, fix: int | None, fix_limit: int,
                 codes: tuple[int | None, int, int]) -> None:
    """The type byte and length of a str, bin, array or map: msgpack's smallest form."""
    if n < fix_limit and fix is not None:
        out.append(fix | n)
    elif n < 0x100 and codes[0] is not None:
        out.append(codes[0])
        out.append(n)
    elif n < 0x10000:
        out.append(codes[1])
        out += n.to_bytes(2, "big")
    elif n < 0x100000000:
        out.append(codes[2])
        out += n.to_bytes(4, "big")
    else:
        raise _NotSmall


def _pack_int(out: bytearray, n: int) -> None:
    if 0 <= n < 0x80 or -0x20 <= n < 0:
        out += n.to_bytes(1, "big", signed=True) if n < 0 else bytes((n,))
    elif n >= 0:
        for code, size in ((0xCC, 1), (0xCD, 2), (0xCE, 4), (0xCF, 8)):
            if n < 1 << (8 * size):
                out.append(code)
                out += n.to_bytes(size, "big")
                return
        raise _NotSmall  # msgpack explains the overflow
    else:
        for code, size in ((0xD0, 1), (0xD1, 2), (0xD2, 4), (0xD3, 8)):
            if n >= -(1 << (8 * size - 1)):
                out.append(code)
                out += n.to_bytes(size, "big", signed=True)
                return
        raise _NotSmall


class SmallDecoder:
    """``Decoder``'s interface and results. Complete frames in a buffer of up to
    ``SMALL_FRAME`` bytes are read in Python; from the first frame that is larger, split
    across reads or unusual, the connection's bytes go to a ``Decoder`` (msgpack)."""

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self.max_frame = max_frame
        self._limit = min(SMALL_FRAME, max_frame)
        self._decoder: Decoder | None = None

    def feed(self, data: bytes | bytearray) -> Iterator[Any]:
        if self._decoder is not None:
            return self._decoder.feed(data)
        data = bytes(data)
        found: list[Any] = []
        pos = 0
        try:
            if len(data) > self._limit:
                raise _NotSmall
            while pos < len(data):
                obj, pos = _unpack(data, pos, 0)
                found.append(obj)
        except (_NotSmall, _Incomplete):
            self._decoder = Decoder(self.max_frame)
            found.extend(self._decoder.feed(data[pos:]))
        return iter(found)


_CONSTANTS = {0xC0: None, 0xC2: False, 0xC3: True}
_INT_CODES = {0xCC: (1, False), 0xCD: (2, False), 0xCE: (4, False), 0xCF: (8, False),
              0xD0: (1, True), 0xD1: (2, True), 0xD2: (4, True), 0xD3: (8, True)}
_LENGTH_CODES = {  # code: (kind, bytes of length)
    0xC4: ("bin", 1), 0xC5: ("bin", 2), 0xC6: ("bin", 4),
    0xD9: ("str", 1), 0xDA: ("str", 2), 0xDB: ("str", 4),
    0xDC: ("array", 2), 0xDD: ("array", 4), 0xDE: ("map", 2), 0xDF: ("map", 4),
}


def _take(data: bytes, pos: int, n: int) -> bytes:
    end = pos + n
    if end > len(data):
        raise _Incomplete
    return data[pos:end]


def _unpack(data: bytes, pos: int, depth: int) -> tuple[Any, int]:
    """The value that starts at ``data[pos]``, and the position after it."""
    if pos >= len(data):
        raise _Incomplete
    if depth > _SMALL_DEPTH:
        raise _NotSmall
    code = data[pos]
    pos += 1
    if code < 0x80:
        return code, pos
    if code >= 0xE0:
        return code - 0x100, pos
    if code < 0x90:
        return _unpack_map(data, pos, code & 0x0F, depth)
    if code < 0xA0:
        return _unpack_array(data, pos, code & 0x0F, depth)
    if code < 0xC0:
        return _unpack_str(data, pos, code & 0x1F)
    if code in _CONSTANTS:
        return _CONSTANTS[code], pos
    if code in _INT_CODES:
        size, signed = _INT_CODES[code]
        return int.from_bytes(_take(data, pos, size), "big", signed=signed), pos + size
    if code in (0xCA, 0xCB):
        import struct

        size = 4 if code == 0xCA else 8
        return struct.unpack(">f" if size == 4 else ">d", _take(data, pos, size))[0], pos + size
    if code not in _LENGTH_CODES:
        raise _NotSmall  # ext types, 0xc1
    kind, size = _LENGTH_CODES[code]
    n = int.from_bytes(_take(data, pos, size), "big")
    pos += size
    if kind == "bin":
        return _take(data, pos, n), pos + n
    if kind == "str":
        return _unpack_str(data, pos, n)
    if kind == "array":
        return _unpack_array(data, pos, n, depth)
    return _unpack_map(data, pos, n, depth)


def _unpack_str(data: bytes, pos: int, n: int) -> tuple[str, int]:
    try:
        return _take(data, pos, n).decode("utf-8"), pos + n
    except UnicodeDecodeError:
        raise _NotSmall from None


def _unpack_array(data: bytes, pos: int, n: int, depth: int) -> tuple[list[Any], int]:
    items = []
    for _ in range(n):
        item, pos = _unpack(data, pos, depth + 1)
        items.append(item)
    return items, pos


def _unpack_map(data: bytes, pos: int, n: int, depth: int) -> tuple[dict[Any, Any], int]:
    result = {}
    for _ in range(n):
        key, pos = _unpack(data, pos, depth + 1)
        if not isinstance(key, str | bytes):
            raise _NotSmall  # msgpack refuses it (strict_map_key)
        result[key], pos = _unpack(data, pos, depth + 1)
    return result, pos
