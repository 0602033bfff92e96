"""Fixtures for the everyday verbs: a real engined per runtime (runc and crun) with busybox
loaded, engctl as a subprocess, and a check that nothing (monitors, exec sessions, mounts)
outlives the containers a test removed."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from engine.testing.daemon import Daemon, mounts_under, processes_mentioning
from tests.containers.conftest import busybox_archive, start_engine  # noqa: F401 - fixture

RUNTIMES = ["runc", "crun"]
ENGCTL = [sys.executable, "-m", "engine.cli.main"]


@pytest.fixture(params=RUNTIMES)
def engine(request: pytest.FixtureRequest, busybox_archive: Path) -> Iterator[Daemon]:  # noqa: F811
    d = start_engine(busybox_archive, request.param)
    d.runtime = request.param  # type: ignore[attr-defined]
    try:
        yield d
        assert_nothing_left(d)
    finally:
        d.cleanup()


def assert_nothing_left(d: Daemon) -> None:
    """Once every container is removed: no monitor, runtime, exec or probe process names
    the daemon's directories, and none of its overlay mounts is left."""
    d.remove_all_containers()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        procs = [p for p in processes_mentioning(str(d.base)) if p != (d.proc.pid if d.proc else 0)]
        mounts = [m for m in mounts_under(d.base) if "/overlay/" in m or "/merged" in m]
        if not procs and not mounts:
            return
        time.sleep(0.2)
    raise AssertionError(f"left behind: processes {procs} ({_cmdlines(procs)}), mounts {mounts}")


def _cmdlines(pids: list[int]) -> list[str]:
    out = []
    for pid in pids:
        try:
            out.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:200])
        except OSError:
            pass
    return out


def engctl(d: Daemon, *args: str, input: bytes | None = None, timeout: float = 120,
           check: bool = True) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "ENGINE_HOST": d.host}
    proc = subprocess.run([*ENGCTL, *args], capture_output=True, env=env, input=input, timeout=timeout)
    if check:
        assert proc.returncode == 0, f"engctl {' '.join(args)} failed ({proc.returncode}): {proc.stderr.decode()}"
    return proc


def run_detached(d: Daemon, script: str, **params: Any) -> str:
    with d.client() as c:
        return str(c.call("container.run", {"image": "busybox", "cmd": ["sh", "-c", script],
                                            "detach": True, **params})["Id"])


def exec_out(d: Daemon, cid: str, *cmd: str) -> tuple[int, bytes]:
    with d.client() as c:
        stream = c.stream("container.exec", id=cid, cmd=list(cmd))
        out = b"".join(item["data"] for item in stream)
        return int(stream.result["ExitCode"]), out


def wait_for_processes(d: Daemon, cid: str, *command_lines: str, timeout: float = 30.0) -> None:
    """Until the container runs a process with each of these command lines: its script got
    that far (an exec that merely ran says nothing of how far the script is)."""
    def running() -> bool:
        code, out = exec_out(d, cid, "ps", "-o", "args")
        return code == 0 and set(command_lines) <= {line.strip() for line in out.decode().splitlines()}

    wait_for(running, timeout, what=f"{command_lines} in {cid[:12]}")


def wait_for(predicate: Any, timeout: float = 30.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")
