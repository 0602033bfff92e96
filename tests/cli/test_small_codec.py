"""engctl's msgpack-free codec (protocol.pack_small / SmallDecoder) against msgpack itself:
the same bytes out, the same values in, and the hand-over to msgpack for what it does not do."""

from __future__ import annotations

import random
from typing import Any

import msgpack
import pytest

from engine.errors import ProtocolError, ResourceExhausted
from engine.rpc import protocol

# Every length and integer boundary where msgpack switches to another encoding.
BOUNDARY_INTS = [0, 1, 127, 128, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**63 - 1, 2**63,
                 2**64 - 1, -1, -32, -33, -128, -129, -32768, -32769, -(2**31), -(2**31) - 1,
                 -(2**63)]
BOUNDARY_LENGTHS = [0, 1, 15, 16, 31, 32, 255, 256, 65535, 65536]


def reference(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True, datetime=False)  # type: ignore[no-any-return]


def decode_small(data: bytes, chunk: int | None = None) -> list[Any]:
    decoder = protocol.SmallDecoder()
    if chunk is None:
        return list(decoder.feed(data))
    return [obj for i in range(0, len(data), chunk) for obj in decoder.feed(data[i : i + chunk])]


def scalars() -> list[Any]:
    values: list[Any] = [None, True, False, 0.0, -1.5, 1e300, float("inf"), "", "é€😀", b"",
                         b"\x00\xff", bytearray(b"ab"), 3.25]
    values += BOUNDARY_INTS
    for n in BOUNDARY_LENGTHS:
        values += ["x" * n, b"y" * n, ["z"] * n, {f"k{i}": i for i in range(n)}]
    return values


@pytest.mark.parametrize("obj", scalars(), ids=lambda o: f"{type(o).__name__}{len(o) if hasattr(o, '__len__') else o!r}"[:40])
def test_same_bytes_and_values_as_msgpack(obj: Any) -> None:
    data = reference(obj)
    assert protocol.pack_small(obj) == data
    expected = list(protocol.Decoder().feed(data * 2))
    assert decode_small(data * 2) == expected
    assert decode_small(data * 2, chunk=7) == expected  # split frames go to msgpack


def random_value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(9 if depth < 3 else 6)
    if kind == 0:
        return rng.choice([None, True, False])
    if kind == 1:
        return rng.choice(BOUNDARY_INTS) + rng.choice([0, 0, 1, -1]) if rng.random() < 0.5 else rng.randrange(-(2**40), 2**40)
    if kind == 2:
        return rng.uniform(-1e9, 1e9)
    if kind == 3:
        return "".join(rng.choice("aZ é€😀\x00") for _ in range(rng.choice([0, 1, 31, 32, 40])))
    if kind == 4:
        return bytes(rng.randrange(256) for _ in range(rng.choice([0, 1, 40])))
    if kind == 5:
        return rng.choice(["run", "container.create", "$stream.item"])
    if kind in (6, 7):
        return [random_value(rng, depth + 1) for _ in range(rng.choice([0, 1, 3, 15, 16, 17]))]
    return {rng.choice(["Id", "State", "é", str(rng.random())]): random_value(rng, depth + 1)
            for _ in range(rng.choice([0, 1, 3, 15, 16, 17]))}


def test_random_structures_match_msgpack() -> None:
    rng = random.Random(6)
    for _ in range(400):
        obj = random_value(rng)
        try:
            data = reference(obj)
        except (OverflowError, ValueError, TypeError):
            continue
        assert protocol.pack_small(obj) == data, obj
        assert decode_small(data) == list(protocol.Decoder().feed(data)), obj


def test_messages_encode_the_same_either_way() -> None:
    params = {"image": "busybox", "cmd": ["true"], "cpus": 0.5, "env": [], "labels": {"a": "b"}}
    assert protocol.encode_request(7, "container.create", params, small=True) == \
        protocol.encode_request(7, "container.create", params)
    assert protocol.encode_notification(protocol.CANCEL, [7], small=True) == \
        protocol.encode_notification(protocol.CANCEL, [7])


@pytest.mark.parametrize("obj", [2**64, -(2**63) - 1, object(), memoryview(b"ab"),
                                 msgpack.ExtType(5, b"x"), "\ud800"])
def test_what_it_does_not_encode_is_left_to_msgpack(obj: Any) -> None:
    try:
        expected: Any = reference(obj)
    except Exception as e:  # the same error msgpack raises
        with pytest.raises(type(e)):
            protocol.pack_small(obj)
    else:
        assert protocol.pack_small(obj) == expected


def test_ext_types_and_deep_nesting_are_decoded_by_msgpack() -> None:
    deep: Any = "leaf"
    for _ in range(200):
        deep = [deep]
    for obj in (msgpack.ExtType(5, b"abc"), msgpack.Timestamp(1, 2), deep, {"t": msgpack.Timestamp(3)}):
        data = reference(obj) if not isinstance(obj, msgpack.Timestamp | dict) else msgpack.packb(obj)
        assert decode_small(data) == list(protocol.Decoder().feed(data))


def test_large_frames_are_decoded_by_msgpack_and_limits_hold() -> None:
    big = reference([1, {"data": b"x" * (protocol.SMALL_FRAME + 10)}])
    assert decode_small(big) == [[1, {"data": b"x" * (protocol.SMALL_FRAME + 10)}]]
    with pytest.raises(ResourceExhausted, match="frame limit"):
        list(protocol.SmallDecoder(max_frame=1024).feed(reference({"blob": b"0" * 4096})))


@pytest.mark.parametrize("data", [b"\xc1" * 8, reference({1: "int key"}), b"\xa2\xff\xfe"])
def test_bad_bytes_are_protocol_errors_as_before(data: bytes) -> None:
    with pytest.raises(ProtocolError, match="unreadable"):
        list(protocol.Decoder().feed(data))
    with pytest.raises(ProtocolError, match="unreadable"):
        list(protocol.SmallDecoder().feed(data))


def test_message_classes_behave_like_named_tuples() -> None:
    msg = protocol.Request(7, "system.ping", {"a": 1})
    assert msg == protocol.Request(msgid=7, method="system.ping", params={"a": 1})
    assert tuple(msg) == (7, "system.ping", {"a": 1})
    assert (msg.msgid, msg.method, msg.params) == (7, "system.ping", {"a": 1})
    assert repr(msg) == "Request(msgid=7, method='system.ping', params={'a': 1})"
    match protocol.Response(1, None, "ok"):
        case protocol.Response(msgid, error, result):
            assert (msgid, error, result) == (1, None, "ok")
    with pytest.raises(TypeError):
        protocol.Notification("m")  # type: ignore[call-arg]
