"""Issue 16.6 and 16.10 at create and for logs, against a real engined: mount destinations
and sources are checked at create (exit 125 with a clear message, not runc's text and 127),
and `logs` clients that do not read hold a batch each, not the whole log."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.rpc import protocol
from engine.testing.daemon import Daemon

from .conftest import start_engine


def engctl(d: Daemon, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "engine.cli.main", *argv], capture_output=True,
                          text=True, timeout=60, env={**os.environ, "ENGINE_HOST": d.host})


@pytest.fixture(scope="module")
def engine_crun(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    from engine.testing.images import busybox_image, write_docker_archive

    archive = tmp_path_factory.mktemp("images") / "busybox.tar"
    write_docker_archive(archive, [busybox_image()])
    d = start_engine(archive, "crun", config={"log-size-max": 64 << 20})
    try:
        yield d
    finally:
        d.cleanup()


@pytest.mark.parametrize(("flags", "says"), [
    (["-v", "/nonexistent-h2:/x"], "bind source path does not exist: /nonexistent-h2"),
    (["-v", "d:/"], "a volume cannot be mounted over /"),  # d is a named volume now
    (["-v", "/tmp:/"], "the destination cannot be '/'"),
    (["-v", "/tmp:x"], "the destination must be an absolute path"),
    (["-v", "/tmp:/a/../proc"], "/proc belongs to the runtime"),
    (["--tmpfs", "/proc"], "/proc belongs to the runtime"),
    (["--tmpfs", "/sys/fs"], "/sys belongs to the runtime"),
    (["--tmpfs", "//"], "the destination cannot be '/'"),
])
def test_bad_mounts_are_refused_at_create(engine_crun: Daemon, flags: list[str], says: str) -> None:
    out = engctl(engine_crun, "run", "--rm", *flags, "busybox", "true")
    assert out.returncode == 125, out.stderr
    assert says in out.stderr
    assert "runc" not in out.stderr and "crun" not in out.stderr
    assert engine_crun.call("container.list", all=True) == []


def test_good_mounts_still_work(engine_crun: Daemon, tmp_path: Path) -> None:
    (tmp_path / "f").write_text("hello\n")
    out = engctl(engine_crun, "run", "--rm", "-v", f"{tmp_path}:/data:ro", "--tmpfs", "/scratch",
                 "busybox", "sh", "-c", "cat /data/f && touch /scratch/x")
    assert out.returncode == 0, out.stderr
    assert out.stdout == "hello\n"


def rss_mb(d: Daemon) -> float:
    assert d.proc is not None
    for line in open(f"/proc/{d.proc.pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_logs_clients_that_do_not_read_hold_little(engine_crun: Daemon) -> None:
    d = engine_crun
    # ~30 MB of output: 300,000 lines of 100 characters
    # no size cap: every line stays on disk for the readers below
    out = engctl(d, "run", "--name", "chatty", "--log-opt", "max-size=-1", "busybox", "sh", "-c",
                 "head -c 30000000 /dev/zero | tr '\\0' a | fold -w 100; echo")
    assert out.returncode == 0, out.stderr[-500:]
    time.sleep(1)
    before = rss_mb(d)
    readers = []
    try:
        for i in range(10):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.connect(str(d.socket))
            follow = i % 2 == 0
            s.sendall(protocol.encode_request(1, "container.logs", {"id": "chatty", "follow": follow}))
            readers.append(s)  # and never read
        time.sleep(3)
        during = rss_mb(d)
        # was ~29 MB a reader: the whole log in memory
        assert during - before < 60, f"RSS {before:.0f} MB -> {during:.0f} MB with 10 idle readers"
        assert d.call("system.ping") == "pong"
    finally:
        for s in readers:
            s.close()
    with d.client() as c:  # a reader that reads gets every line
        lines = sum(item["data"].count(b"\n") for item in c.stream("container.logs", id="chatty"))
    assert lines == 300_000  # 30 MB of output, read back whole
