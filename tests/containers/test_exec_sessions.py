"""Exec sessions run under a conmon of their own: they outlive the daemon (SIGKILL or
SIGTERM) as containers do, a restarted daemon adopts them and records their exit code, a
removal still kills them, and no runtime process is left as a zombie in the container."""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from engine.testing.daemon import Daemon, processes_mentioning
from engine.testing.procs import alive, parent_of

from .conftest import start_engine

# waits until /tmp/go exists in the container, so the test decides when it ends
WAIT_FOR_GO = "while [ ! -e /tmp/go ]; do sleep 0.1; done"


def wait_until(check: Callable[[], Any], timeout: float = 20, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what or check}"
        time.sleep(0.05)


def exec_code(d: Daemon, cid: str, cmd: list[str]) -> int:
    with d.client(timeout=30) as c:
        stream = c.stream("container.exec", id=cid, cmd=cmd)
        list(stream)
        return int(stream.result["ExitCode"])


def exec_die_codes(d: Daemon, cid: str) -> list[str]:
    with d.client(timeout=30) as c:
        events = list(c.stream("system.events", since=0, until=time.time(),
                               filters={"type": ["container"], "event": ["exec_die"]}))
    return [str(e["Actor"]["Attributes"]["exitCode"]) for e in events if e["Actor"]["ID"] == cid]


class ExecClient(threading.Thread):
    """An attached exec (tty or not) read in a thread until its connection ends (with the
    daemon, here)."""

    def __init__(self, d: Daemon, cid: str, cmd: list[str], *, tty: bool = False) -> None:
        super().__init__(daemon=True)
        self.client = d.client(timeout=60)
        if tty:
            self.stream: Any = self.client.duplex("container.exec", id=cid, cmd=cmd, tty=True, stdin=True)
            self.stream.resize(24, 80)
        else:
            self.stream = self.client.stream("container.exec", id=cid, cmd=cmd)
        self.output = b""
        self.ended: BaseException | None = None

    def run(self) -> None:
        try:
            for item in self.stream:
                self.output += item["data"]
        except BaseException as e:  # noqa: BLE001 - the daemon went away: what we wait for
            self.ended = e
        finally:
            self.client.close()


def run_survivor(d: Daemon, cid: str, marker: str, code: int, *, tty: bool) -> tuple[ExecClient, int]:
    """Start an attached exec that prints ``started``, waits for /tmp/go, writes to its
    output again (its terminal must still be there) and exits with ``code``."""
    script = f"echo started; {WAIT_FOR_GO}; echo after || exit 99; exit {code}"
    client = ExecClient(d, cid, ["sh", "-c", script, marker], tty=tty)
    client.start()
    wait_until(lambda: b"started" in client.output, what="the exec's first output")
    [pid] = wait_until(lambda: exec_shell(marker), what="the exec'd process")
    return client, pid


def exec_shell(marker: str) -> list[int]:
    """The exec's shell: the process naming ``marker`` whose parent does not (while the shell
    forks to run a command, the child shows the same command line until it execs)."""
    found = processes_mentioning(marker)
    try:
        return [pid for pid in found if parent_of(pid) not in found]
    except (OSError, IndexError, ValueError):  # one went meanwhile: look again
        return []


@pytest.mark.parametrize("how", ["sigkill", "sigterm"])
@pytest.mark.parametrize("runtime", ["runc", "crun"])
def test_an_exec_outlives_the_daemon_and_its_exit_is_recorded(
        busybox_archive: Path, runtime: str, how: str) -> None:
    d = start_engine(busybox_archive, runtime)
    try:
        cid = d.call("container.run", image="busybox", cmd=["sleep", "300"], detach=True)["Id"]
        marker = f"exec-{uuid.uuid4().hex[:12]}"
        client, pid = run_survivor(d, cid, marker, 7, tty=False)
        # the session's process spec holds its environment: the owner's alone
        [session] = (d.run_root / "containers" / cid / "execs").glob("*/process.json")
        assert (session.stat().st_mode & 0o777, session.parent.stat().st_mode & 0o777) == (0o600, 0o700)
        if how == "sigkill":
            d.kill9()
        else:
            assert d.stop(30) == 0
        client.join(20)
        assert not client.is_alive(), "the client's stream did not end with the daemon"
        time.sleep(0.5)
        assert alive(pid), f"the exec'd process died with the daemon ({how})"

        d.start()
        assert alive(pid)
        assert exec_die_codes(d, cid) == []
        assert exec_code(d, cid, ["touch", "/tmp/go"]) == 0
        wait_until(lambda: not alive(pid), what="the exec'd process to end")
        # the restarted daemon saw it end, with its real exit code
        codes = wait_until(lambda: [c for c in exec_die_codes(d, cid) if c != "0"], what="exec_die")
        assert codes == ["7"]
        run_dir = d.run_root / "containers" / cid
        wait_until(lambda: not list((run_dir / "execs").glob("*")), what="the session's files to go")
    finally:
        d.cleanup()


@pytest.mark.parametrize("runtime", ["runc", "crun"])
def test_a_tty_exec_keeps_its_terminal_across_a_restart_and_rm_f_kills_it(
        busybox_archive: Path, runtime: str) -> None:
    d = start_engine(busybox_archive, runtime)
    try:
        cid = d.call("container.run", image="busybox", cmd=["sleep", "300"], detach=True)["Id"]
        marker = f"tty-{uuid.uuid4().hex[:12]}"
        client, pid = run_survivor(d, cid, marker, 3, tty=True)
        d.kill9()
        client.join(20)
        time.sleep(0.5)
        assert alive(pid), "the tty exec died with the daemon (SIGHUP or EIO)"

        d.start()
        assert alive(pid)
        # it writes to its terminal after the restart and ends normally: had the terminal
        # gone with the old daemon, it would have died of SIGHUP (129) or failed (99)
        assert exec_code(d, cid, ["touch", "/tmp/go"]) == 0
        wait_until(lambda: not alive(pid), what="the tty exec to end")
        assert wait_until(lambda: [c for c in exec_die_codes(d, cid) if c != "0"], what="exec_die") == ["3"]

        # a surviving session is the container's again: rm -f ends it and its conmon
        marker = f"rm-{uuid.uuid4().hex[:12]}"
        exec_client = ExecClient(d, cid, ["sh", "-c", "echo started; sleep 1000; exit 5", marker])
        exec_client.start()
        wait_until(lambda: b"started" in exec_client.output, what="the second exec")
        [pid] = wait_until(lambda: exec_shell(marker), what="the second exec's process")
        d.kill9()
        exec_client.join(20)
        d.start()
        assert alive(pid)
        d.call("container.remove", id=cid, force=True)
        wait_until(lambda: not alive(pid), what="rm -f to kill the exec")
        assert wait_until(lambda: not processes_mentioning(cid), 10, "the monitors to go") is True
    finally:
        d.cleanup()


def zombies_in_pid_namespace(init_pid: int) -> list[tuple[str, int]]:
    """Zombie processes in the pid namespace of host process ``init_pid``: (name, host pid
    of the parent)."""
    namespace = os.readlink(f"/proc/{init_pid}/ns/pid")
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.readlink(f"/proc/{entry}/ns/pid") != namespace:
                continue
            status = dict(line.split(":\t", 1) for line in
                          Path(f"/proc/{entry}/status").read_text().splitlines() if ":\t" in line)
        except OSError:
            continue
        if status["State"].startswith("Z"):
            found.append((status["Name"], int(status["PPid"])))
    return found


@pytest.mark.parametrize("runtime", ["runc", "crun"])
def test_execs_leave_no_zombie_in_a_container_without_an_init(busybox_archive: Path, runtime: str) -> None:
    d = start_engine(busybox_archive, runtime)
    try:
        # `sleep` as pid 1 reaps nobody: whatever the runtime left in the container stays
        cid = d.call("container.run", image="busybox", cmd=["sleep", "300"], detach=True)["Id"]
        init = d.call("container.inspect", id=cid)["State"]["Pid"]
        for _ in range(3):
            # crun's non-detached exec used to leave a (crun) zombie in the container here
            assert exec_code(d, cid, ["nonexistent-command"]) == 127
        assert exec_code(d, cid, ["sh", "-c", "kill -9 $$"]) == 137
        assert exec_code(d, cid, ["sh", "-c", "echo hi"]) == 0
        # the container's pid 1 reaps nobody, so a zombie left to it stays for good; one whose
        # runtime parent went first belongs to the host's init, which reaps it when it will
        assert [z for z in zombies_in_pid_namespace(init) if z[1] != 1] == []
        # Not executable: crun's child in the container can outlive crun and the exec's
        # conmon, and is then the host init's to reap (a race inside crun); never the
        # container's pid 1's.
        assert exec_code(d, cid, ["/etc"]) == 126
        assert [z for z in zombies_in_pid_namespace(init) if z[1] == init] == []
    finally:
        d.cleanup()
