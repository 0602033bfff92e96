"""stdin without a terminal: run -i and exec -i through pipes, EOF closing the container's
stdin, a 50 MB stream arriving byte-exact while the daemon's memory stays bounded, the SDK's
attach, and what rpc.describe says of the methods that take input."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

from engine.testing.daemon import Daemon
from tests.interactive.conftest import engctl
from tests.interactive.pty_session import ENGCTL

MiB = 1024 * 1024


def test_run_i_pipes_stdin_and_eof_ends_the_command(engine: Daemon) -> None:
    result = engctl(engine, "run", "-i", "--rm", "busybox", "tr", "a-z", "A-Z", input=b"a\nb\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"A\nB\n"
    assert engine.call("container.list", all=True) == []  # --rm


def test_exit_code_and_stderr_of_a_run_i(engine: Daemon) -> None:
    result = engctl(engine, "run", "-i", "--rm", "busybox", "sh", "-c", "cat >&2; exit 9",
                    input=b"to stderr\n")
    assert result.returncode == 9
    assert result.stderr == b"to stderr\n"
    assert result.stdout == b""


def test_exec_i_pipes_stdin(engine: Daemon) -> None:
    assert engctl(engine, "run", "-d", "--name", "box", "busybox", "sleep", "300").returncode == 0
    result = engctl(engine, "exec", "-i", "box", "tr", "a-z", "A-Z", input=b"a\nb\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"A\nB\n"
    result = engctl(engine, "exec", "-i", "box", "sh", "-c", "wc -c; exit 4", input=b"12345")
    assert (result.returncode, result.stdout.strip()) == (4, b"5")


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def test_50_mb_of_stdin_arrive_byte_exact_with_bounded_daemon_memory(engine: Daemon, tmp_path: Path) -> None:
    data = tmp_path / "data"
    with open(data, "wb") as f:
        for _ in range(50):
            f.write(os.urandom(MiB))
    expected = hashlib.sha256(data.read_bytes()).hexdigest()
    assert engine.proc is not None
    pid = engine.proc.pid
    baseline = _rss(pid)
    peak = [baseline]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss(pid))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        with open(data, "rb") as stdin:
            result = engctl(engine, "run", "-i", "--rm", "busybox", "sha256sum", stdin=stdin, timeout=300)
    finally:
        done.set()
        sampler.join()
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[0].decode() == expected
    # a window of 64 items of at most 64 KiB each, far below the 50 MB that went through
    assert peak[0] - baseline < 24 * MiB, f"daemon RSS grew by {(peak[0] - baseline) / MiB:.1f} MiB"


def test_sdk_attach_to_a_run_d_i_container(engine: Daemon) -> None:
    with engine.client() as c:
        cid = c.call("container.run", image="busybox", cmd=["sh", "-c", "read a; echo got-$a; read b; exit $b"],
                     open_stdin=True, detach=True)["Id"]
        with c.attach(cid) as session:
            session.write(b"one\n")
            seen = b""
            for item in session:
                seen += item["data"]
                if b"got-one" in seen:
                    break
            session.write(b"6\n")
            for item in session:
                seen += item["data"]
        assert seen == b"got-one\n"
        assert session.result["ExitCode"] == 6


def test_attach_no_stdin_keeps_the_container_waiting_for_input(engine: Daemon) -> None:
    with engine.client() as c:
        cid = c.call("container.run", image="busybox", cmd=["sh", "-c", "read a; echo got-$a"],
                     open_stdin=True, detach=True)["Id"]
        with c.attach(cid, stdin=False) as session:
            session.write(b"dropped\n")
            session.close_stdin()
            time.sleep(1)
            assert c.call("container.inspect", id=cid)["State"]["Running"]
            session.cancel()
        with c.attach(cid) as session:
            session.write(b"kept\n")
            out = b"".join(item["data"] for item in session)
        assert out == b"got-kept\n"


def test_describe_marks_the_methods_that_take_input(engine: Daemon) -> None:
    described = engine.call("rpc.describe")
    methods = {m["name"]: m for m in described["methods"]}
    for name in ("container.attach", "container.run", "container.start", "container.exec"):
        assert methods[name]["input"] is True, name
    assert methods["container.logs"]["input"] is False
    assert described["max_input_item"] == 64 * 1024


def _running(d: Daemon, name: str) -> bool:
    try:
        return bool(d.call("container.inspect", id=name)["State"]["Running"])
    except Exception:
        return False


def _engctl_popen(d: Daemon, *argv: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "ENGINE_HOST": d.host}
    return subprocess.Popen([*ENGCTL, *argv], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)


TRAP = 'trap "echo got-term; exit 5" TERM; echo ready; while :; do sleep 0.1; done'


def test_sig_proxy_sends_engctls_signals_to_the_container(engine: Daemon) -> None:
    proc = _engctl_popen(engine, "run", "-i", "--name", "trapper", "busybox", "sh", "-c", TRAP)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"ready\n"
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 5
    assert out == b"got-term\n"


def test_without_sig_proxy_a_signal_leaves_the_container_alone(engine: Daemon) -> None:
    proc = _engctl_popen(engine, "run", "-i", "--sig-proxy=false", "--name", "alone", "busybox", "sh", "-c", TRAP)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"ready\n"
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == -signal.SIGTERM
    assert _running(engine, "alone")
