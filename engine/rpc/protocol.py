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

Framing: msgpack is self-delimiting; a message larger than ``MAX_FRAME`` bytes is a protocol
error and the connection is closed.
"""

from __future__ import annotations

import msgpack

from engine.errors import ProtocolError, ResourceExhausted

# typing costs engctl ~7 ms of start-up here, so the message classes are plain namedtuples at
# run time (msgpack imports collections anyway); type checkers see the same fields, typed.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any, NamedTuple

REQUEST = 0
RESPONSE = 1
NOTIFICATION = 2

MAX_FRAME = 16 * 1024 * 1024
STREAM_WINDOW = 64
MAX_MSGID = 2**32 - 1

STREAM_ITEM = "$stream.item"
STREAM_ACK = "$stream.ack"
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
    from collections import namedtuple

    Request = namedtuple("Request", ["msgid", "method", "params"])
    Response = namedtuple("Response", ["msgid", "error", "result"])
    Notification = namedtuple("Notification", ["method", "params"])


Message = Request | Response | Notification


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True, datetime=False)  # type: ignore[no-any-return]


def encode_request(msgid: int, method: str, params: dict[str, Any] | None = None) -> bytes:
    return pack([REQUEST, msgid, method, [params or {}]])


def encode_response(msgid: int, error: dict[str, Any] | None, result: Any) -> bytes:
    return pack([RESPONSE, msgid, error, result])


def encode_notification(method: str, params: list[Any]) -> bytes:
    return pack([NOTIFICATION, method, params])


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

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self.max_frame = max_frame
        self._unpacker = msgpack.Unpacker(
            raw=False,
            strict_map_key=True,
            max_buffer_size=max_frame,
            use_list=True,
            timestamp=0,
        )

    def feed(self, data: bytes | bytearray) -> Iterator[Any]:
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
                raise ProtocolError(f"unreadable msgpack data: {e}") from None
            yield obj
