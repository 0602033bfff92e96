"""The container core against the real daemon, runtimes and conmon: docker's behaviour for
exec and start failures, stop timeouts that kill and rm -f cut short, restart decisions at
daemon start, and no exit lost under a flood of calls."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
import trio

from engine.client.aio import connect
from engine.errors import Conflict, EngineError, InvalidArgument
from engine.testing.daemon import Daemon

from .conftest import collect_output, start_engine


def exec_in(d: Daemon, cid: str, cmd: list[str]) -> tuple[int, bytes, bytes]:
    with d.client(timeout=30) as c:
        stream = c.stream("container.exec", id=cid, cmd=cmd)
        out, err = collect_output(stream)
        return stream.result["ExitCode"], out, err


def test_exec_exit_codes_follow_docker(engine: Daemon) -> None:
    cid = engine.call("container.run", image="busybox", cmd=["sleep", "300"], detach=True)["Id"]
    assert exec_in(engine, cid, ["nonexistent-command"])[0] == 127
    assert exec_in(engine, cid, ["/etc"])[0] == 126  # a directory
    assert exec_in(engine, cid, ["/etc/passwd"])[0] == 126  # not executable
    assert exec_in(engine, cid, ["sh", "-c", "exit 7"])[0] == 7
    engine.call("container.remove", id=cid, force=True)


def test_run_of_a_directory_exits_126(engine: Daemon) -> None:
    with pytest.raises(EngineError) as info:
        with engine.client() as c:
            list(c.stream("container.run", image="busybox", cmd=["/etc"]))
    assert info.value.details["exit_code"] == 126
    cid = info.value.details["container_id"]
    assert engine.call("container.inspect", id=cid)["State"]["ExitCode"] == 126


def pids_cgroup_processes(pid: int) -> list[bytes]:
    """The command lines of every process in the pids cgroup of host process ``pid``."""
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "pids" in controllers.split(","):
            procs = Path("/sys/fs/cgroup/pids", path.lstrip("/"), "cgroup.procs").read_text().split()
            return [Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ") for p in procs]
    pytest.fail("no pids cgroup (cgroup v1 with the pids controller expected here)")


def test_exec_returns_while_its_background_processes_keep_running(engine: Daemon) -> None:
    cid = engine.call("container.run", image="busybox", cmd=["sleep", "300"], detach=True,
                      pids_limit=50)["Id"]
    started = time.monotonic()
    code, out, _ = exec_in(engine, cid, ["sh", "-c", "sleep 200 & sleep 201 & echo started"])
    assert (code, out) == (0, b"started\n")
    assert time.monotonic() - started < 10  # it did not wait for the sleeps
    code, out, _ = exec_in(engine, cid, ["ps", "-o", "args"])
    assert b"sleep 200" in out and b"sleep 201" in out
    # they are the container's processes: in its pids cgroup, counted against --pids-limit
    init = engine.call("container.inspect", id=cid)["State"]["Pid"]
    commands = pids_cgroup_processes(init)
    assert any(cmd.startswith(b"sleep 200") for cmd in commands), commands
    assert any(cmd.startswith(b"sleep 201") for cmd in commands), commands
    engine.call("container.remove", id=cid, force=True)


def logs_of(d: Daemon, cid: str) -> bytes:
    with d.client() as c:
        return b"".join(item["data"] for item in c.stream("container.logs", id=cid))


def wait_for_log(d: Daemon, cid: str, text: bytes, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while text not in logs_of(d, cid):
        assert time.monotonic() < deadline, f"{text!r} never logged by {cid}"
        time.sleep(0.05)


def test_stop_timeouts_are_whole_seconds_and_kill_cuts_a_long_stop_short(engine: Daemon) -> None:
    # a pid 1 that notes SIGTERM (so the test knows the stop is under way) and lives on:
    # only SIGKILL ends it
    cid = engine.call("container.run", image="busybox", detach=True, cmd=[
        "sh", "-c", "trap 'echo got-term' TERM; echo ready; while :; do sleep 0.1; done"])["Id"]
    wait_for_log(engine, cid, b"ready\n")
    for bad in (float("nan"), 1e308, -5, 3.5):
        with pytest.raises(InvalidArgument):
            engine.call("container.stop", id=cid, timeout=bad)
    outcome: dict[str, Any] = {}

    def stop() -> None:
        try:
            outcome["stop"] = engine.call("container.stop", id=cid, timeout=3600)
        except EngineError as e:
            outcome["stop"] = e

    stopper = threading.Thread(target=stop)
    stopper.start()
    wait_for_log(engine, cid, b"got-term\n")  # the stop is pending (a kill before it would leave nothing to stop)
    started = time.monotonic()
    engine.call("container.kill", id=cid)  # SIGKILL: preempts the pending stop
    stopper.join(20)
    assert not stopper.is_alive()
    assert time.monotonic() - started < 10
    assert outcome["stop"]["stopped"] is True
    info = engine.call("container.inspect", id=cid)
    assert info["State"]["Status"] == "exited" and info["State"]["ExitCode"] == 137
    engine.call("container.remove", id=cid)


def test_rm_force_cuts_a_pending_stop_short(engine: Daemon) -> None:
    cid = engine.call("container.run", image="busybox", cmd=["sleep", "1000"], detach=True)["Id"]
    stopper = threading.Thread(target=lambda: engine.call("container.stop", id=cid, timeout=-1))
    stopper.start()
    time.sleep(0.5)
    started = time.monotonic()
    engine.call("container.remove", id=cid, force=True)
    stopper.join(20)
    assert not stopper.is_alive() and time.monotonic() - started < 10
    assert cid not in {c["Id"] for c in engine.call("container.list", all=True)}


def test_inspect_shows_docker_shapes(engine: Daemon) -> None:
    cid = engine.call("container.run", image="busybox", cmd=["sh", "-c", "exit 3"], detach=True)["Id"]
    with engine.client() as c:
        c.call("container.wait", id=cid)
    info = engine.call("container.inspect", id=cid)
    assert info["NetworkSettings"]["Ports"] == {}
    assert info["HostConfig"]["PortBindings"] == {}
    assert info["State"]["FinishedAt"] >= info["State"]["StartedAt"]
    assert info["State"]["ExitCode"] == 3


def test_daemon_start_applies_docker_restart_semantics(busybox_archive: Path) -> None:
    d = start_engine(busybox_archive, "runc")
    try:
        for policy in ("always", "unless-stopped", "on-failure", "no"):
            d.call("container.run", image="busybox", name=policy, restart=policy,
                   cmd=["sleep", "1000"], detach=True)
            d.call("container.stop", id=policy, timeout=0)
        d.call("container.run", image="busybox", name="failed", restart="on-failure:2",
               cmd=["sh", "-c", "sleep 1; exit 1"], detach=True)
        deadline = time.monotonic() + 30
        while d.call("container.inspect", id="failed")["RestartCount"] < 2:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        d.stop()
        d.start()
        deadline = time.monotonic() + 20
        while d.call("container.inspect", id="always")["State"]["Status"] != "running":
            assert time.monotonic() < deadline, "always: a user-stopped container starts with the daemon"
            time.sleep(0.1)
        time.sleep(2)
        assert d.call("container.inspect", id="unless-stopped")["State"]["Status"] == "exited"
        assert d.call("container.inspect", id="on-failure")["State"]["Status"] == "exited"
        assert d.call("container.inspect", id="no")["State"]["Status"] == "exited"
        failed = d.call("container.inspect", id="failed")
        assert failed["RestartCount"] == 2 and failed["State"]["Status"] == "exited"  # retries used up
        always = d.call("container.inspect", id="always")
        assert "daemon start" in always["RestartReason"]
    finally:
        d.cleanup()


async def test_a_flood_of_calls_loses_no_exit(busybox_archive: Path) -> None:
    d = await trio.to_thread.run_sync(start_engine, busybox_archive, "crun")
    try:
        outcomes: dict[str, int] = {"ok": 0, "busy": 0}
        async with connect(d.host) as client:
            created = await client.call("container.run", image="busybox", detach=True,
                                        cmd=["sh", "-c", "sleep 1; exit 3"])
            cid = created["Id"]

            async def hit(i: int) -> None:
                try:
                    if i % 2:
                        await client.call("container.inspect", id=cid)
                    else:
                        await client.call("container.stop", id=cid, timeout=30)
                    outcomes["ok"] += 1
                except Conflict:
                    outcomes["busy"] += 1  # a full mailbox says so at once

            with trio.fail_after(120):
                async with trio.open_nursery() as nursery:
                    for i in range(1000):
                        nursery.start_soon(hit, i)
            info = await client.call("container.inspect", id=cid)
            assert await client.call("system.ping") == "pong"
        assert outcomes["ok"] + outcomes["busy"] == 1000 and outcomes["ok"] >= 500
        assert info["State"]["Status"] == "exited"
        assert info["State"]["ExitCode"] == 3  # the container's own code, not a stop's
    finally:
        await trio.to_thread.run_sync(d.cleanup)
