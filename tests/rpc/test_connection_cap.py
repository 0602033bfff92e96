"""Connections beyond what the daemon's descriptors allow (issue 16.10), against a real
engined with a lowered RLIMIT_NOFILE: extra connections are told why and closed, the daemon
logs that once (no traceback ten times a second), and work on the open connections, which
needs descriptors of its own, still succeeds."""

from __future__ import annotations

import resource
import socket
import time
from pathlib import Path

from engine.rpc import protocol
from engine.testing.daemon import Daemon
from engine.testing.images import busybox_image, write_docker_archive

NOFILE = 512  # the cap is then 512 - 256


def test_connections_beyond_the_cap_are_refused_cleanly(daemon: Daemon, tmp_path: Path) -> None:
    archive = tmp_path / "busybox.tar"
    write_docker_archive(archive, [busybox_image()])
    assert daemon.proc is not None
    resource.prlimit(daemon.proc.pid, resource.RLIMIT_NOFILE, (NOFILE, NOFILE))
    worker = daemon.client()  # opened before the flood: its calls must keep working
    idle: list[socket.socket] = []
    refused = 0
    try:
        for _ in range(350):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(str(daemon.socket))  # blocking: a full backlog waits, no EAGAIN
            idle.append(s)
        # a connect returns once queued: read the refusals until the daemon has taken every
        # connection (open ones count in Connections, with the worker's), 30 s at most
        unanswered = list(idle)
        deadline = time.monotonic() + 30
        while True:
            for s in list(unanswered):
                s.setblocking(False)
                try:
                    data = s.recv(65536)
                except BlockingIOError:
                    continue  # accepted and idle, or not taken yet
                unanswered.remove(s)
                (note,) = protocol.Decoder().feed(data)
                assert note[1] == protocol.ERROR_EVENT
                assert note[2][0]["code"] == "resource_exhausted"
                assert "too many connections" in note[2][0]["message"]
                refused += 1
            accepted = worker.call("system.info")["Connections"] - 1
            if accepted + refused >= len(idle):
                break
            assert time.monotonic() < deadline, f"{accepted} accepted and {refused} refused of {len(idle)}"
            time.sleep(0.1)
        assert 50 <= refused <= 120, refused
        # work that opens files still has descriptors
        assert worker.call("image.load", path=str(archive))
        assert worker.call("system.ping") == "pong"
    finally:
        for s in idle:
            s.close()
        worker.close()
    deadline = time.monotonic() + 10
    while True:
        try:
            assert daemon.call("system.ping") == "pong"
            break
        except Exception:  # noqa: BLE001 - closed idle connections take a moment to go
            assert time.monotonic() < deadline
            time.sleep(0.1)
    log = daemon.log()
    assert "Traceback" not in log
    assert 1 <= log.count("refusing RPC connections") <= 2
