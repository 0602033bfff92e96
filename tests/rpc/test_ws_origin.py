"""The WebSocket RPC refuses browser handshakes from origins the daemon does not allow
(issue 16, item 2). A real engined on a loopback port; handshakes made byte by byte, as a
browser sends them, and with our own client."""

from __future__ import annotations

import base64
import os
import socket
from collections.abc import Iterator

import pytest
import trio
from trio_websocket import ConnectionRejected, open_websocket

from engine.client.aio import connect
from engine.errors import ConfigError
from engine.rpc import protocol
from engine.supervisor.config import build_config
from engine.testing.daemon import Daemon


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tcp_daemon(*extra: str, config: dict | None = None) -> tuple[Daemon, int]:
    """A daemon listening on a loopback port (plain WebSocket) and on its unix socket (which
    Daemon.start pings through: the sync client speaks unix sockets only)."""
    port = free_port()
    d = Daemon(extra_args=["--default-network", "none", "-H", f"tcp://127.0.0.1:{port}"],
               config=config)
    d.extra_args += ["-H", f"unix://{d.socket}", *extra]
    return d.start(), port


@pytest.fixture
def plain() -> Iterator[tuple[Daemon, int]]:
    d, port = tcp_daemon()
    try:
        yield d, port
    finally:
        d.cleanup()


ALLOWED = ["http://Good.Example:8080", "https://also.example"]


@pytest.fixture(params=["flag", "daemon.json"])
def allowing(request: pytest.FixtureRequest) -> Iterator[tuple[Daemon, int]]:
    if request.param == "flag":
        d, port = tcp_daemon(*(arg for origin in ALLOWED for arg in ("--ws-allowed-origin", origin)))
    else:
        d, port = tcp_daemon(config={"ws-allowed-origins": ALLOWED})
    try:
        yield d, port
    finally:
        d.cleanup()


def raw_handshake(port: int, origin: str | None) -> bytes:
    """The server's answer to an upgrade request (its status line and headers)."""
    key = base64.b64encode(os.urandom(16)).decode()
    lines = ["GET / HTTP/1.1", f"Host: 127.0.0.1:{port}", "Upgrade: websocket",
             "Connection: Upgrade", f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13"]
    if origin is not None:
        lines.append(f"Origin: {origin}")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = s.recv(4096)
            if not chunk:
                break
            answer += chunk
        return answer


def rpc_over_websocket(port: int, method: str, origin: str | None = None) -> object:
    """One RPC over a WebSocket opened with the given Origin (trio-websocket's client)."""
    headers = [(b"Origin", origin.encode())] if origin is not None else []

    async def main() -> object:
        with trio.fail_after(20):
            async with open_websocket("127.0.0.1", port, "/", use_ssl=False,
                                      extra_headers=headers) as ws:
                await ws.send_message(protocol.encode_request(1, method))
                reply = await ws.get_message()
                (message,) = protocol.Decoder().feed(reply)
                return message

    return trio.run(main)


def test_a_web_page_origin_is_refused(plain: tuple[Daemon, int]) -> None:
    d, port = plain
    answer = raw_handshake(port, "http://evil.example.com")
    assert answer.startswith(b"HTTP/1.1 403"), answer
    assert b"101" not in answer.split(b"\r\n")[0]
    with pytest.raises(ConnectionRejected) as rejected:
        rpc_over_websocket(port, "system.info", origin="http://evil.example.com")
    assert rejected.value.status_code == 403
    assert b"ws-allowed-origin" in (rejected.value.body or b"")
    # file:// pages and sandboxed frames send "null": refused as well.
    assert raw_handshake(port, "null").startswith(b"HTTP/1.1 403")
    assert "refused a WebSocket handshake" in d.log()
    assert d.call("system.ping") == "pong"  # the daemon serves on


def test_clients_without_origin_still_work(plain: tuple[Daemon, int]) -> None:
    _, port = plain
    assert raw_handshake(port, None).startswith(b"HTTP/1.1 101")
    reply = rpc_over_websocket(port, "system.info")
    assert reply[0] == protocol.RESPONSE and reply[2] is None and reply[3]["Root"]

    async def via_sdk() -> object:
        with trio.fail_after(20):
            async with connect(f"tcp://127.0.0.1:{port}") as client:
                return await client.call("system.ping")

    assert trio.run(via_sdk) == "pong"


def test_only_the_configured_origins_are_allowed(allowing: tuple[Daemon, int]) -> None:
    _, port = allowing
    # Compared as browsers serialise origins (lower case, no default port).
    for origin in ("http://good.example:8080", "https://also.example", "https://also.example:443"):
        reply = rpc_over_websocket(port, "system.ping", origin=origin)
        assert reply[3] == "pong", origin
    for origin in ("http://good.example", "http://good.example:8081", "https://good.example:8080",
                   "http://evil.example.com", "http://also.example"):
        assert raw_handshake(port, origin).startswith(b"HTTP/1.1 403"), origin


def test_bad_allowed_origins_are_config_errors() -> None:
    for bad in ("*", "good.example", "http://good.example/path", "http://"):
        with pytest.raises(ConfigError, match="ws-allowed-origins"):
            build_config({"ws_allowed_origins": [bad]}, {}, "test")
    config = build_config({"ws_allowed_origins": ["HTTP://Good.Example:80"]}, {}, "test")
    assert config.ws_allowed_origins == ["http://good.example"]
