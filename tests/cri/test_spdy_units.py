"""SPDY/3.1 framing (engine.cri.streaming.spdy) without a daemon: round trips of every frame
type, header compression over one zlib context per direction, and refused input."""

from __future__ import annotations

import struct
import zlib

import pytest

from engine.cri.streaming import spdy
from engine.cri.streaming.server import TokenCache
from engine.cri.streaming.spdysessions import expected_streams, negotiate, resize_items
from engine.cri.streaming.targets import ExecTarget


def _roundtrip(frames: list[spdy.Frame]) -> list[spdy.Frame]:
    sender, receiver = spdy.SpdyCodec(), spdy.SpdyCodec()
    wire = b"".join(sender.encode(f) for f in frames)
    out: list[spdy.Frame] = []
    for i in range(0, len(wire), 7):  # arbitrary chunking: frames straddle reads
        receiver.receive_data(wire[i:i + 7])
        out += list(receiver.frames())
    return out


def test_dictionary_is_spdy3s() -> None:
    # the zlib dictionary id a peer checks: adler32 of the 1423-byte SPDY/3 dictionary
    assert len(spdy.DICTIONARY) == 1423
    assert zlib.adler32(spdy.DICTIONARY) == 0xE3C6A7C2


def test_every_frame_round_trips() -> None:
    frames: list[spdy.Frame] = [
        spdy.SynStream(1, {"streamtype": ["error"]}, priority=3),
        spdy.SynStream(3, {"streamtype": ["stdin"], "port": ["80"]}, fin=True, unidirectional=True),
        spdy.SynReply(1, {"x": ["a", "b"]}),
        spdy.SynReply(3, {}, fin=True),
        spdy.HeadersFrame(5, {"k": ["v"]}, fin=True),
        spdy.DataFrame(1, b"hello"),
        spdy.DataFrame(1, b"", fin=True),
        spdy.DataFrame(7, bytes(range(256)) * 300),
        spdy.RstStream(9, spdy.CANCEL),
        spdy.Settings([(0, 7, 65536), (1, 4, 100)], clear=True),
        spdy.Ping(1),
        spdy.GoAway(11, spdy.GOAWAY_PROTOCOL_ERROR),
        spdy.WindowUpdate(1, 4096),
    ]
    assert _roundtrip(frames) == frames


def test_header_blocks_share_one_zlib_context() -> None:
    """Header blocks are compressed against all earlier ones (sync-flushed, never reset):
    a later block cannot be read without the earlier ones, and repeats get smaller."""
    sender = spdy.SpdyCodec()
    headers = {"streamtype": ["stdout"], "x-long-header-name": ["some value " * 5]}
    first = sender.encode(spdy.SynStream(1, headers))
    second = sender.encode(spdy.SynStream(3, headers))
    assert len(second) < len(first)  # the second block refers back into the first
    fresh = spdy.SpdyCodec()
    fresh.receive_data(second)
    with pytest.raises(spdy.ProtocolError):
        list(fresh.frames())  # a context that never saw the first block cannot read it
    receiver = spdy.SpdyCodec()
    receiver.receive_data(first + second)
    got = list(receiver.frames())
    assert [f.headers for f in got] == [headers, headers]  # type: ignore[union-attr]


def test_header_block_from_another_implementation() -> None:
    """A block made by plain zlib with the dictionary (what Go's compress/zlib sends)."""
    block = spdy.encode_header_block({"streamtype": ["error"], "requestid": ["0"]})
    deflate = zlib.compressobj(zlib.Z_BEST_COMPRESSION, zlib.DEFLATED, 15, zdict=spdy.DICTIONARY)
    payload = struct.pack(">IIBB", 1, 0, 0, 0) + deflate.compress(block) + deflate.flush(zlib.Z_SYNC_FLUSH)
    codec = spdy.SpdyCodec()
    codec.receive_data(struct.pack(">HHI", 0x8003, spdy.SYN_STREAM, len(payload)) + payload)
    (frame,) = list(codec.frames())
    assert frame == spdy.SynStream(1, {"streamtype": ["error"], "requestid": ["0"]})


def test_absurd_length_is_refused_before_buffering() -> None:
    codec = spdy.SpdyCodec()
    codec.receive_data(struct.pack(">II", 1, 0xFFFFFF))  # a data frame claiming 16 MiB
    with pytest.raises(spdy.ProtocolError, match="over the"):
        list(codec.frames())


@pytest.mark.parametrize("wire", [
    struct.pack(">HHI", 0x8002, spdy.PING, 4) + b"\0\0\0\1",  # SPDY/2
    struct.pack(">HHI", 0x8003, spdy.PING, 3) + b"\0\0\1",  # a PING is 4 bytes
    struct.pack(">HHI", 0x8003, spdy.RST_STREAM, 4) + b"\0\0\0\1",
    struct.pack(">HHI", 0x8003, spdy.SETTINGS, 4) + b"\0\0\0\5",  # 5 entries promised, none given
    struct.pack(">HHI", 0x8003, spdy.SYN_STREAM, 12) + b"\0" * 10 + b"xx",  # not zlib
])
def test_malformed_control_frames_are_refused(wire: bytes) -> None:
    codec = spdy.SpdyCodec()
    codec.receive_data(wire)
    with pytest.raises(spdy.ProtocolError):
        list(codec.frames())


def test_decompression_bomb_is_refused() -> None:
    block = struct.pack(">I", 1) + struct.pack(">I", 1) + b"a" + struct.pack(">I", 4 << 20) + b"\0" * (4 << 20)
    deflate = zlib.compressobj(9, zlib.DEFLATED, 15, zdict=spdy.DICTIONARY)
    payload = struct.pack(">I", 1) + deflate.compress(block) + deflate.flush(zlib.Z_SYNC_FLUSH)
    assert len(payload) < spdy.MAX_FRAME
    codec = spdy.SpdyCodec()
    codec.receive_data(struct.pack(">HHI", 0x8003, spdy.SYN_REPLY, len(payload)) + payload)
    with pytest.raises(spdy.ProtocolError, match="header block over"):
        list(codec.frames())


def test_unknown_control_frames_are_skipped() -> None:
    codec = spdy.SpdyCodec()
    codec.receive_data(struct.pack(">HHI", 0x8003, 0x42, 3) + b"abc" + spdy.SpdyCodec().encode(spdy.Ping(3)))
    assert list(codec.frames()) == [spdy.UnknownControl(0x42), spdy.Ping(3)]


def test_protocol_negotiation_and_streams() -> None:
    supported = ["v4.channel.k8s.io", "v3.channel.k8s.io", "v2.channel.k8s.io", "channel.k8s.io"]
    assert negotiate(["v5.channel.k8s.io", "v3.channel.k8s.io", "v4.channel.k8s.io"], supported) == \
        "v3.channel.k8s.io"  # the client's order
    assert negotiate(["nope"], supported) == ""
    assert expected_streams("v4.channel.k8s.io", True, True, False, True) == {"error", "stdin", "stdout", "resize"}
    assert expected_streams("v2.channel.k8s.io", True, True, False, True) == {"error", "stdin", "stdout"}


async def test_resize_messages_in_any_chunking() -> None:
    chunks = [b'{"Width":80,', b'"Height":24}{"Width"', b':100,"Height":30}', b'{"Width":"x"}', b'{"Width":1,"Height":1}']

    async def receive() -> bytes:
        return chunks.pop(0) if chunks else b""

    items = [item async for item in resize_items(receive)]
    assert items == [{"resize": [24, 80]}, {"resize": [30, 100]}]  # a bad one ends them


def test_tokens_are_single_use_and_expire(monkeypatch: pytest.MonkeyPatch) -> None:
    cache = TokenCache(ttl=60, limit=2)
    target = ExecTarget("c", ["true"])
    token = cache.insert(target)
    assert len(token) >= 32
    assert cache.consume(token) == target
    assert cache.consume(token) is None
    import engine.cri.streaming.server as server

    now = [1000.0]
    monkeypatch.setattr(server.time, "monotonic", lambda: now[0])
    old = cache.insert(target)
    now[0] += 61
    assert cache.consume(old) is None
    cache.insert(target)
    cache.insert(target)
    with pytest.raises(server.ResourceExhausted):
        cache.insert(target)


async def test_connection_driver_streams_pings_and_resets() -> None:
    """The trio driver over an in-memory transport: a client opens streams, sends data and
    FIN, pings; the server accepts one stream, refuses another, answers and half-closes."""
    import trio
    import trio.testing

    from engine.cri.streaming.spdyconn import SpdyConnection

    server_side, client_side = trio.testing.memory_stream_pair()
    conn = SpdyConnection(server_side)
    client = spdy.SpdyCodec()

    async def client_frames(count: int) -> list[spdy.Frame]:
        got: list[spdy.Frame] = []
        with trio.fail_after(5):
            while len(got) < count:
                client.receive_data(await client_side.receive_some(65536))
                got += list(client.frames())
        return got

    async with trio.open_nursery() as nursery:
        nursery.start_soon(conn.run)
        await client_side.send_all(client.encode(spdy.SynStream(1, {"streamtype": ["stdin"]})) +
                                   client.encode(spdy.SynStream(3, {"streamtype": ["bogus"]})) +
                                   client.encode(spdy.Ping(7)))
        first = await conn.new_streams.receive()
        second = await conn.new_streams.receive()
        assert (first.id, first.header("streamtype")) == (1, "stdin")
        await conn.accept(first)
        await conn.refuse(second)
        got = await client_frames(3)
        assert sorted(got, key=repr) == sorted(
            [spdy.Ping(7), spdy.SynReply(1, {}), spdy.RstStream(3, spdy.REFUSED_STREAM)], key=repr)
        await client_side.send_all(client.encode(spdy.DataFrame(1, b"abc")) +
                                   client.encode(spdy.DataFrame(1, b"", fin=True)) +
                                   client.encode(spdy.DataFrame(3, b"dropped")))
        assert await first.receive() == b"abc"
        assert await first.receive() == b""  # FIN
        await first.send(b"x" * 70000)  # split into 32 KiB frames
        await first.close()
        frames = await client_frames(4)
        assert b"".join(f.data for f in frames) == b"x" * 70000  # type: ignore[union-attr]
        assert frames[-1] == spdy.DataFrame(1, b"", fin=True)
        # a stream id going backwards is a protocol error for that stream
        await client_side.send_all(client.encode(spdy.SynStream(1, {"streamtype": ["stdout"]})))
        assert await client_frames(1) == [spdy.RstStream(1, spdy.PROTOCOL_ERROR)]
        await client_side.aclose()  # the client goes away
        with trio.fail_after(5):
            await conn.closed.wait()
        nursery.cancel_scope.cancel()


def test_streaming_address_is_checked() -> None:
    from engine.cri.streaming.server import parse_address
    from engine.errors import ConfigError

    assert parse_address("127.0.0.1:0") == ("127.0.0.1", 0)
    assert parse_address("[::1]:10010") == ("::1", 10010)
    assert parse_address("localhost:10010") == ("localhost", 10010)
    for bad in ("nonsense", "127.0.0.1", ":80", "127.0.0.1:99999", "host:port", "0.0.0.0:10010",
                "[::]:10010", "192.0.2.1:10010"):
        with pytest.raises(ConfigError, match="cri-streaming-address"):
            parse_address(bad)
