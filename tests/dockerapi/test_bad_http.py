"""Bad HTTP on the Docker API socket, against a real engined: garbage bytes, oversized
headers, a body longer or shorter than its Content-Length, a body over the cap, clients that
stall mid-request, 200 connections at once. Each gets a 4xx or a closed connection; nothing
it asked for half-way happens; the daemon keeps serving both APIs (``/_ping`` and the msgpack
RPC's ``system.ping``) and holds no socket of a client that is gone."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest

from .conftest import Engine, EngineFactory

REQUEST_TIMEOUT = 2.0  # the daemon's head/body read timeout in this test (60 s by default)


@pytest.fixture
def engine(make_engine: EngineFactory) -> Engine:
    return make_engine(env={"ENGINE_DOCKER_API_REQUEST_TIMEOUT": str(REQUEST_TIMEOUT)})


def connect(engine: Engine, timeout: float = 15) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # a blocking connect waits while the listen backlog is full (a timeout would make it
    # non-blocking: EAGAIN at once on a unix socket)
    sock.connect(str(engine.docker_socket))
    sock.settimeout(timeout)
    return sock


def send(sock: socket.socket, data: bytes) -> bool:
    """False when the daemon closed the connection before taking it all."""
    try:
        sock.sendall(data)
    except (BrokenPipeError, ConnectionResetError):
        return False
    return True


def read_all(sock: socket.socket) -> bytes:
    """Everything until the daemon closes the connection (a reset counts as closed)."""
    chunks = []
    while True:
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            break
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks)


def statuses(reply: bytes) -> list[int]:
    """The status codes of the responses in ``reply`` (in order)."""
    return [int(line.split(b" ")[1]) for line in reply.split(b"\r\n") if line.startswith(b"HTTP/1.1 ")]


def assert_refused(reply: bytes) -> None:
    """A 4xx, or the connection closed without an answer."""
    codes = statuses(reply)
    assert all(400 <= c < 500 for c in codes), reply[:500]


def assert_serving(engine: Engine) -> None:
    with connect(engine) as sock:
        sock.sendall(b"GET /_ping HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n")
        reply = read_all(sock)
    assert statuses(reply) == [200] and reply.endswith(b"OK"), reply
    assert engine.daemon.call("system.ping") is not None
    assert engine.daemon.proc is not None and engine.daemon.proc.poll() is None


def open_sockets(pid: int) -> int:
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            count += os.readlink(fd).startswith("socket:")
        except FileNotFoundError:  # closed while we looked
            pass
    return count


def volume_names(engine: Engine) -> set[str]:
    return {v["Name"] for v in engine.daemon.call("volume.list")["Volumes"]}


def test_malformed_requests_get_4xx_or_a_closed_connection(engine: Engine) -> None:
    assert engine.daemon.proc is not None
    assert_serving(engine)
    baseline = open_sockets(engine.daemon.proc.pid)

    for garbage in [b"\x00\xff\xfe garbage \x01\x02\r\n\r\n", b"GET\r\n\r\n", b"\x16\x03\x01\x02\x00\x01\x00",
                    b"GET /_ping HTTP/1.1\r\nno colon here\r\n\r\n"]:
        with connect(engine) as sock:
            send(sock, garbage)
            sock.shutdown(socket.SHUT_WR)
            reply = read_all(sock)
        assert_refused(reply)
        assert statuses(reply) in ([], [400]), (garbage, reply[:300])

    # headers over the daemon's 64 KiB cap: 431 (or closed), never buffered without end
    with connect(engine) as sock:
        sent = send(sock, b"GET /_ping HTTP/1.1\r\nHost: docker\r\nX-Big: " + b"a" * (256 * 1024) + b"\r\n\r\n")
        reply = read_all(sock)
    assert_refused(reply)
    if sent or reply:
        assert statuses(reply) in ([], [431]), reply[:300]

    # a body longer than its Content-Length: the announced part is the body (invalid JSON:
    # 400), the rest reads as a next request (garbage: 400, closed); nothing is created
    with connect(engine) as sock:
        body = b'{"Name": "smuggled"}'
        send(sock, b"POST /volumes/create HTTP/1.1\r\nHost: docker\r\nContent-Type: application/json\r\n"
                   b"Content-Length: 3\r\n\r\n" + body)
        reply = read_all(sock)
    assert statuses(reply)[:1] == [400], reply
    assert_refused(reply)
    assert "smuggled" not in volume_names(engine)

    # two Content-Lengths that disagree, and a negative one: refused before any handler runs
    for head in [b"Content-Length: 5\r\nContent-Length: 6\r\n", b"Content-Length: -1\r\n"]:
        with connect(engine) as sock:
            send(sock, b"POST /volumes/create HTTP/1.1\r\nHost: docker\r\n" + head + b"\r\n" + b'{"Name": "x"}')
            reply = read_all(sock)
        assert statuses(reply) in ([], [400]), reply
    assert volume_names(engine) == set()

    # a body over the 16 MiB cap of a JSON request: 413 (or closed), not held in memory
    with connect(engine, timeout=30) as sock:
        size = 17 * 1024 * 1024
        sent = send(sock, b"POST /volumes/create HTTP/1.1\r\nHost: docker\r\nContent-Type: application/json\r\n"
                          + f"Content-Length: {size}\r\n\r\n".encode() + b" " * size)
        reply = read_all(sock)
    assert_refused(reply)
    assert statuses(reply) in ([], [413]), reply[:300]

    assert_serving(engine)
    wait_for_sockets(engine, baseline)


def wait_for_sockets(engine: Engine, baseline: int, timeout: float = 15) -> None:
    """The daemon holds no socket of a client that is gone (a leak would show here)."""
    assert engine.daemon.proc is not None
    deadline = time.monotonic() + timeout
    while (now := open_sockets(engine.daemon.proc.pid)) > baseline:
        assert time.monotonic() < deadline, f"{now} sockets open, {baseline} before"
        time.sleep(0.2)


def test_a_client_that_stalls_mid_request_is_cut_off_and_others_are_served(engine: Engine) -> None:
    assert engine.daemon.proc is not None
    assert_serving(engine)
    baseline = open_sockets(engine.daemon.proc.pid)
    stalled = [connect(engine, timeout=REQUEST_TIMEOUT + 10) for _ in range(3)]
    try:
        started = time.monotonic()
        stalled[0].sendall(b"POST /volumes/create HTTP/1.1\r\nHost: docker\r\nContent-")  # half a head
        stalled[1].sendall(b"POST /volumes/create HTTP/1.1\r\nHost: docker\r\nContent-Type: application/json\r\n"
                           b"Content-Length: 100\r\n\r\n{\"Name\": \"half")  # 14 of 100 bytes
        stalled[2].sendall(b"G")  # one byte of a request line
        # while they stall, everyone else is served, on both APIs
        assert_serving(engine)
        for sock in stalled:
            reply = read_all(sock)  # the daemon closes them; recv's timeout would fail first
            assert_refused(reply)
        waited = time.monotonic() - started
        assert REQUEST_TIMEOUT * 0.9 <= waited < REQUEST_TIMEOUT + 8, waited
    finally:
        for sock in stalled:
            sock.close()
    assert "half" not in volume_names(engine) and volume_names(engine) == set()
    assert_serving(engine)
    wait_for_sockets(engine, baseline)


def test_200_connections_at_once(engine: Engine) -> None:
    assert engine.daemon.proc is not None
    assert_serving(engine)
    baseline = open_sockets(engine.daemon.proc.pid)
    socks = [connect(engine, timeout=60) for _ in range(200)]
    try:
        for i, sock in enumerate(socks):
            if i % 4 == 0:
                send(sock, b"\x00garbage\r\n\r\n")
            elif i % 4 == 1:
                send(sock, b"GET /v9.99/_ping HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n")
            elif i % 4 == 2:
                send(sock, b"GET /volumes/nope HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n")
            else:
                send(sock, b"GET /_ping HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n")
        # the RPC is served while the Docker API has 200 clients
        assert engine.daemon.call("system.ping") is not None
        expected = {0: ([], [400]), 1: ([400],), 2: ([404],), 3: ([200],)}
        for i, sock in enumerate(socks):
            reply = read_all(sock)
            assert statuses(reply) in expected[i % 4], (i, reply[:300])
    finally:
        for sock in socks:
            sock.close()
    assert_serving(engine)
    wait_for_sockets(engine, baseline)
