"""Undecodable RPC frames are refused with the reason in words (issue 16, item 10): a real
engined over its unix socket; the connection closes, the daemon serves on."""

from __future__ import annotations

import pytest

from engine.errors import ProtocolError
from engine.rpc import protocol
from engine.testing.daemon import Daemon

from .test_daemon_rpc import assert_still_serving, raw_socket, read_messages


def deeply_nested_request(depth: int) -> bytes:
    # [0, 1, "system.ping", [[[...[nil]...]]]]: fixarray headers, one per level.
    return b"\x94\x00\x01\xabsystem.ping" + b"\x91" * depth + b"\xc0"


@pytest.mark.parametrize(("frame", "reason"), [
    (deeply_nested_request(5000),
     f"arrays/maps nested deeper than {protocol.MSGPACK_MAX_DEPTH} levels"),
    (b"\xc1\xc1 not msgpack", "a byte that starts no msgpack value (such as 0xc1)"),
], ids=["deep-nesting", "bad-format-byte"])
def test_the_error_says_what_was_wrong(daemon: Daemon, frame: bytes, reason: str) -> None:
    s = raw_socket(daemon)
    s.sendall(frame)
    (note,) = read_messages(s)
    assert note[0] == 2 and note[1] == "$error"
    error = note[2][0]
    assert error["code"] == "protocol_error"
    assert error["message"] == f"unreadable msgpack data: {reason}"
    assert s.recv(10) == b""  # that connection is closed
    s.close()
    assert_still_serving(daemon)
    assert reason in daemon.log()


def test_the_decoder_limit_is_what_msgpack_enforces() -> None:
    ok = b"\x91" * protocol.MSGPACK_MAX_DEPTH + b"\xc0"
    assert len(list(protocol.Decoder().feed(ok))) == 1
    with pytest.raises(ProtocolError, match="deeper than 1024 levels"):
        list(protocol.Decoder().feed(b"\x91" + ok))
