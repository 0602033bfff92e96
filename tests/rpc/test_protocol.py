"""The sans-IO protocol layer: message shapes, framing and limits."""

from __future__ import annotations

import msgpack
import pytest

from engine.errors import EngineError, NotFound, ProtocolError, ResourceExhausted, from_wire
from engine.rpc import protocol


def test_request_round_trip() -> None:
    data = protocol.encode_request(7, "system.ping", {"a": 1})
    (obj,) = list(protocol.Decoder().feed(data))
    msg = protocol.parse_message(obj)
    assert msg == protocol.Request(7, "system.ping", {"a": 1})


def test_messages_split_across_reads_are_reassembled() -> None:
    data = protocol.encode_request(1, "a", {}) + protocol.encode_request(2, "b", {"x": "y" * 1000})
    decoder = protocol.Decoder()
    got = []
    for i in range(0, len(data), 7):
        got.extend(decoder.feed(data[i : i + 7]))
    assert [protocol.parse_message(o).method for o in got] == ["a", "b"]


def test_oversized_frame_is_refused() -> None:
    decoder = protocol.Decoder(max_frame=1024)
    big = protocol.encode_request(1, "x", {"blob": b"0" * 4096})
    with pytest.raises(ResourceExhausted, match="frame limit"):
        list(decoder.feed(big))


def test_garbage_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="unreadable"):
        list(protocol.Decoder().feed(b"\xc1" * 8))  # 0xc1 is never valid msgpack


@pytest.mark.parametrize(
    "obj, message",
    [
        ({"not": "a list"}, "non-empty array"),
        ([], "non-empty array"),
        ([0, 1, "m"], "request must be"),
        ([0, -1, "m", []], "unsigned 32-bit"),
        ([0, 1, 5, []], "method must be a string"),
        ([0, 1, "m", "params"], "params must be an array"),
        ([9, 1], "unknown message type"),
    ],
)
def test_malformed_messages(obj: object, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        protocol.parse_message(obj)


def test_errors_round_trip_through_the_wire() -> None:
    err = from_wire(NotFound("no such container: web").to_wire())
    assert isinstance(err, NotFound) and err.exit_code == 125 and "web" in str(err)
    future = from_wire({"code": "brand_new_code", "message": "m"})
    assert type(future) is EngineError and future.code == "brand_new_code"
    assert isinstance(from_wire(["not_found", "gone"]), NotFound)


def test_bin_and_str_are_distinct() -> None:
    data = protocol.encode_response(1, None, {"s": "text", "b": b"\x00\x01"})
    (obj,) = list(protocol.Decoder().feed(data))
    assert obj[3] == {"s": "text", "b": b"\x00\x01"}
    assert msgpack.unpackb(data)[3]["b"] == b"\x00\x01"
