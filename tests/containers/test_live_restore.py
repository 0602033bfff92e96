"""Containers survive anything the daemon goes through: SIGKILL mid-flight, restart,
adoption; and the engine leaves nothing behind."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from engine.errors import Conflict, EngineError, NotFound
from engine.testing.daemon import Daemon, mounts_under, processes_mentioning

from .conftest import run_attached, start_engine


def wait_status(d: Daemon, ref: str, status: str, timeout: float = 15) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        info = d.call("container.inspect", id=ref)
        if info["State"]["Status"] == status:
            return info
        assert time.monotonic() < deadline, f"{ref}: {info['State']['Status']} != {status}"
        time.sleep(0.05)


@pytest.mark.parametrize("runtime", ["runc", "crun"])
def test_sigkill_of_the_daemon_costs_containers_nothing(busybox_archive: Path, runtime: str) -> None:
    d = start_engine(busybox_archive, runtime)
    try:
        d.call("container.create", image="busybox", name="runner",
               cmd=["sh", "-c", "i=0; while :; do echo tick$i; i=$((i+1)); sleep 0.1; done"])
        d.call("container.start", id="runner")
        d.call("container.create", image="busybox", name="ender", cmd=["sh", "-c", "sleep 1; exit 42"])
        d.call("container.start", id="ender")
        d.call("container.create", image="busybox", name="always", restart="always",
               cmd=["sh", "-c", "sleep 1.5; exit 1"])
        d.call("container.start", id="always")
        running = wait_status(d, "runner", "running")
        pid = running["State"]["Pid"]

        # Kill the daemon while another container is being created.
        creator = threading.Thread(target=_create_quietly, args=(d,))
        creator.start()
        time.sleep(0.02)
        d.kill9()
        creator.join(30)
        log_size = Path(running["LogPath"]).stat().st_size
        time.sleep(2.0)  # meanwhile: runner keeps logging, ender exits with 42
        assert Path(f"/proc/{pid}").exists(), "the container died with the daemon"
        assert Path(running["LogPath"]).stat().st_size > log_size, "logging stopped with the daemon"

        d.start()
        info = wait_status(d, "runner", "running")
        assert info["State"]["Pid"] == pid
        ender = wait_status(d, "ender", "exited")
        assert ender["State"]["ExitCode"] == 42
        # the restart policy goes on for the one that exited while we were down
        deadline = time.monotonic() + 15
        while d.call("container.inspect", id="always")["RestartCount"] < 1:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        names = {c["Names"][0] for c in d.call("container.list", all=True)}
        assert "half" not in names or d.call("container.inspect", id="half")["State"]["Status"] == "created"
        # the adopted container is still fully controllable
        d.call("container.stop", id="runner", timeout=2)
        assert not Path(f"/proc/{pid}").exists()
        with d.client() as c:
            logs = b"".join(i["data"] for i in c.stream("container.logs", id="runner"))
        # every tick, in order, none lost while the daemon was away (how many there are
        # depends on the machine's speed: not asserted beyond the growth checked above)
        ticks = logs.splitlines()
        assert ticks == [b"tick%d" % i for i in range(len(ticks))] and len(ticks) > 1, ticks[:5]
        for name in list(names):
            try:
                d.call("container.remove", id=name, force=True)
            except NotFound:
                pass
        overlay = d.root / "storage" / "overlay" / "containers"
        assert not mounts_under(overlay)
        assert not processes_mentioning(str(d.run_root / "containers")), "monitor processes left behind"
    finally:
        d.cleanup()


def _create_quietly(d: Daemon) -> None:
    try:
        d.call("container.create", image="busybox", name="half", cmd=["true"])
    except (EngineError, OSError):
        pass


def test_concurrent_stop_kill_restart_rm_end_consistent(busybox_archive: Path) -> None:
    d = start_engine(busybox_archive, "crun")
    try:
        for round_ in range(5):
            name = f"race{round_}"
            d.call("container.create", image="busybox", name=name, cmd=["sleep", "1000"])
            d.call("container.start", id=name)
            errors: list[BaseException] = []

            def hit(method: str, name: str = name, errors: list[BaseException] = errors,
                    **params: object) -> None:
                try:
                    d.call(method, id=name, **params)
                except (Conflict, NotFound):
                    pass  # the only acceptable failures
                except BaseException as e:  # noqa: BLE001
                    errors.append(e)

            threads = [
                threading.Thread(target=hit, args=("container.stop",), kwargs={"timeout": 1}),
                threading.Thread(target=hit, args=("container.kill",)),
                threading.Thread(target=hit, args=("container.restart",), kwargs={"timeout": 1}),
                threading.Thread(target=hit, args=("container.remove",), kwargs={"force": True}),
                threading.Thread(target=hit, args=("container.stop",), kwargs={"timeout": 1}),
                threading.Thread(target=hit, args=("container.restart",), kwargs={"timeout": 1}),
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            assert not errors, errors
            with pytest.raises(NotFound):
                d.call("container.inspect", id=name)  # rm -f was among them: it must have won
        assert not mounts_under(d.root / "storage" / "overlay" / "containers")
        assert not processes_mentioning(str(d.run_root / "containers"))
    finally:
        d.cleanup()


def _fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _settled_mounts(d: Daemon, timeout: float = 10) -> list[str]:
    """The mounts under the daemon's base once no container rootfs is mounted any more
    (--rm frees them in the background, moments after the removal was told)."""
    deadline = time.monotonic() + timeout
    while True:
        mounts = mounts_under(d.base)
        if not any("/containers/" in m for m in mounts):
            return mounts
        assert time.monotonic() < deadline, mounts
        time.sleep(0.05)


def test_200_run_rm_cycles_leak_nothing(busybox_archive: Path) -> None:
    d = start_engine(busybox_archive, "crun")
    try:
        assert d.proc is not None
        run_attached(d, cmd=["true"], auto_remove=True)  # warm up caches
        mounts_before = _settled_mounts(d)
        fds_before = _fd_count(d.proc.pid)
        for _ in range(200):
            code, _, _ = run_attached(d, cmd=["true"], auto_remove=True)
            assert code == 0
        deadline = time.monotonic() + 10
        while d.call("container.list", all=True):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert _settled_mounts(d) == mounts_before
        assert not processes_mentioning(str(d.run_root / "containers"))
        while _fd_count(d.proc.pid) > fds_before + 2:  # a closed client's socket may linger a moment
            assert time.monotonic() < deadline + 5, os.listdir(f"/proc/{d.proc.pid}/fd")
            time.sleep(0.05)
    finally:
        d.cleanup()
