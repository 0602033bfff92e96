"""An attached run gets every byte of its container's output (docker's attach stream), from
conmon's attach socket connected before the process runs, not from the log: the log rotates
by default (10 MiB x 3) and a writer faster than a log follower used to lose the rotated-away
parts (30 MB written in under a second reached the client as ~13 MB, or nothing at all
without a newline). Real engined, runc/crun and conmon; the client is the real engctl."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.testing.daemon import Daemon

from .conftest import collect_output, start_engine

ENGCTL = str(Path(sys.executable).with_name("engctl"))
TOTAL = 30_000_000
# Numbered lines on both streams, alternating, as fast as the shell goes.
INTERLEAVED = "i=0; while [ $i -lt 20000 ]; do echo out$i; echo err$i >&2; i=$((i+1)); done"


@pytest.fixture(scope="module", params=["runc", "crun"])
def engine(request: pytest.FixtureRequest, busybox_archive: Path) -> Iterator[Daemon]:
    d = start_engine(busybox_archive, request.param)
    try:
        yield d
    finally:
        d.cleanup()


def engctl(d: Daemon, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([ENGCTL, "-H", d.host, *args], capture_output=True, timeout=timeout,
                          env={**os.environ, "NO_COLOR": "1"})


@pytest.mark.parametrize("writer", [
    "head -c 30000000 /dev/zero | tr '\\0' a",  # one line without an end
    "yes | head -c 30000000",  # 15 million short lines
])
def test_a_fast_writer_reaches_an_attached_run_whole(engine: Daemon, writer: str) -> None:
    # the daemon's default logging: k8s-file, rotated at 10 MiB, 3 files (less than 30 MB)
    started = time.monotonic()
    result = engctl(engine, "run", "--rm", "busybox", "sh", "-c", writer)
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    assert len(result.stdout) == TOTAL
    expected_byte = b"a" if "zero" in writer else b"y\n"
    assert result.stdout == expected_byte * (TOTAL // len(expected_byte))
    assert time.monotonic() - started < 60
    assert engine.call("container.list", all=True) == []


def uptime() -> float:
    return float(Path("/proc/uptime").read_text().split()[0])


def test_a_slow_client_gets_everything_and_the_container_waits_for_it(engine: Daemon) -> None:
    """conmon writes to an attached client with blocking writes: a client that reads slowly
    slows the container down (as docker's attach does), it does not lose output."""
    size = 2_000_000
    with engine.client(timeout=None) as c:
        began = time.time()
        # the writer's end on the host's uptime clock (centiseconds; `date +%s` had whole
        # seconds, an error of up to 1 s on a figure of about 2)
        began_uptime = uptime()
        stream = c.stream("container.run", {"image": "busybox", "auto_remove": True, "cmd": [
            "sh", "-c", f"yes | head -c {size}; cut -d' ' -f1 /proc/uptime >&2"]})
        received = bytearray()
        stderr = b""
        for item in stream:
            if item["stream"] == "stdout":
                received += item["data"]
                time.sleep(0.01)  # ~250 chunks of 8 KiB: about 2.5 s of reading
            else:
                stderr += item["data"]
        read_for = time.time() - began
    assert bytes(received) == b"y\n" * (size // 2)
    assert stream.result["ExitCode"] == 0
    writer_done = float(stderr) - began_uptime
    # the writer finished well after it could have (a fraction of a second) unthrottled:
    # it waited for the reader; only the sockets' buffers were ahead of the reader
    assert read_for > 2
    assert writer_done > read_for / 3, (writer_done, read_for)


def test_stdout_and_stderr_stay_separate_and_in_order(engine: Daemon) -> None:
    with engine.client(timeout=None) as c:
        stream = c.stream("container.run", {"image": "busybox", "auto_remove": True,
                                            "cmd": ["sh", "-c", INTERLEAVED + "; exit 5"]})
        out, err = collect_output(stream)
    assert stream.result["ExitCode"] == 5
    assert out == "".join(f"out{i}\n" for i in range(20000)).encode()
    assert err == "".join(f"err{i}\n" for i in range(20000)).encode()


def test_an_immediately_exiting_container_never_loses_its_line(engine: Daemon) -> None:
    for attempt in range(50):
        result = engctl(engine, "run", "--rm", "busybox", "echo", f"hi {attempt}", timeout=60)
        assert (result.returncode, result.stdout) == (0, f"hi {attempt}\n".encode()), (
            attempt, result.stderr.decode(errors="replace"))
    assert engine.call("container.list", all=True) == []


def test_start_attached_and_no_log_driver_still_stream(engine: Daemon) -> None:
    """start -a goes the same way; with log-driver none (no log at all) an attached client
    still gets the output, as docker's does."""
    with engine.client(timeout=None) as c:
        cid = c.call("container.create", {"image": "busybox", "log_driver": "none", "cmd": [
            "sh", "-c", "echo one; echo two >&2; exit 4"]})["Id"]
        for _ in range(2):  # a second start streams the second run only
            stream = c.stream("container.start", id=cid, attach=True)
            out, err = collect_output(stream)
            assert (out, err, stream.result["ExitCode"]) == (b"one\n", b"two\n", 4)
        c.call("container.remove", id=cid)


def test_an_attached_run_has_dockers_events(engine: Daemon) -> None:
    """create, attach, start, die, destroy: attached before the start, and no detach when
    the session ends with the container's output (docker emits one only for a client that
    leaves)."""
    with engine.client(timeout=None) as c:
        began = time.time()
        stream = c.stream("container.run", {"image": "busybox", "auto_remove": True, "cmd": ["true"]})
        collect_output(stream)
        cid = stream.result["Id"]
        time.sleep(0.3)  # a late detach event would come by now
        actions = [e["Action"] for e in c.stream("system.events", since=began, until=time.time(),
                                                  filters={"container": [cid]})]
    assert actions == ["create", "attach", "start", "die", "destroy"], actions
