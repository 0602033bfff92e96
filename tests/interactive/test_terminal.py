"""engctl with a terminal, driven through a real pseudo-terminal: run -it, the window size
at start and after a resize, detaching with ctrl-p ctrl-q and attaching again, exit codes,
exec -it, create -it + start -ai, and the client's terminal settings after each session."""

from __future__ import annotations

import time

import pytest

from engine.testing.daemon import Daemon
from tests.interactive.conftest import engctl
from tests.interactive.pty_session import PtySession

PROMPT = r"# "


@pytest.fixture
def sessions() -> list[PtySession]:
    opened: list[PtySession] = []
    yield opened
    for s in opened:
        s.close()


def open_session(sessions: list[PtySession], d: Daemon, *argv: str, rows: int = 24,
                 cols: int = 80) -> PtySession:
    s = PtySession(list(argv), d.host, rows=rows, cols=cols)
    sessions.append(s)
    return s


def wait_for_size(s: PtySession, rows: int, cols: int, timeout: float = 20) -> None:
    """Ask `stty size` until the container's terminal has the new size: a resize travels
    (SIGWINCH, engctl, the daemon, conmon) while the test goes on."""
    deadline = time.monotonic() + timeout
    while True:
        s.send(b"stty size\r")
        shown = s.expect(rb"\r\n(\d+) (\d+)\r\n")
        if (int(shown[1]), int(shown[2])) == (rows, cols):
            return
        assert time.monotonic() < deadline, f"the terminal stayed {shown[1]!r}x{shown[2]!r}, not {rows}x{cols}"
        time.sleep(0.2)


def state(d: Daemon, name: str) -> str:
    return str(d.call("container.inspect", id=name)["State"]["Status"])


def test_run_it_computes_resizes_detaches_and_attaches_again(engine: Daemon, sessions: list[PtySession]) -> None:
    s = open_session(sessions, engine, "run", "-it", "--name", "shell", "busybox", "sh", rows=24, cols=80)
    s.expect(PROMPT)
    s.send(b"echo $((6*7))\r")
    s.expect(r"\r\n42\r\n")
    s.send(b"stty size\r")
    s.expect(r"\r\n24 80\r\n")
    s.resize(41, 123)  # SIGWINCH to engctl, which tells the container's terminal
    wait_for_size(s, 41, 123)
    s.send(b"\x10\x11")  # ctrl-p ctrl-q
    assert s.wait() == 0
    assert s.stty_g() == s.settings_before
    assert state(engine, "shell") == "running"

    s = open_session(sessions, engine, "attach", "shell", rows=30, cols=90)
    s.send(b"\r")
    s.expect(PROMPT)
    s.send(b"stty size\r")
    s.expect(r"\r\n30 90\r\n")  # attach sends its own window size
    s.send(b"exit 3\r")
    assert s.wait() == 3
    assert s.stty_g() == s.settings_before
    assert state(engine, "shell") == "exited"
    assert engine.call("container.inspect", id="shell")["State"]["ExitCode"] == 3


def test_logs_of_a_tty_container_hold_its_output(engine: Daemon, sessions: list[PtySession]) -> None:
    s = open_session(sessions, engine, "run", "-it", "--name", "logged", "busybox", "sh")
    s.expect(PROMPT)
    s.send(b"echo marker-$((20+3))\r")
    s.expect(r"marker-23")
    s.send(b"exit\r")
    assert s.wait() == 0
    logs = engctl(engine, "logs", "logged")
    assert logs.returncode == 0
    assert b"marker-23" in logs.stdout


def test_exec_it_into_a_running_container(engine: Daemon, sessions: list[PtySession]) -> None:
    run = engctl(engine, "run", "-d", "-it", "--name", "box", "busybox", "sh")
    assert run.returncode == 0, run.stderr
    s = open_session(sessions, engine, "exec", "-it", "box", "sh", rows=33, cols=101)
    s.expect(PROMPT)
    s.send(b"echo $((6*7)); stty size; tty\r")
    s.expect(r"\r\n42\r\n33 101\r\n/dev/pts/\d+\r\n")
    s.resize(20, 60)
    wait_for_size(s, 20, 60)
    s.send(b"exit 7\r")
    assert s.wait() == 7
    assert s.stty_g() == s.settings_before
    assert state(engine, "box") == "running"  # the container's own shell is untouched
    # the `run -d -it` container's own terminal: attach, then leave it with other keys
    s = open_session(sessions, engine, "attach", "--detach-keys", "ctrl-x,x", "box")
    s.send(b"echo again-$((1+1))\r")
    s.expect(r"again-2")
    s.send(b"\x18x")
    assert s.wait() == 0
    assert s.stty_g() == s.settings_before
    assert state(engine, "box") == "running"


def test_create_it_then_start_ai(engine: Daemon, sessions: list[PtySession]) -> None:
    created = engctl(engine, "create", "-it", "--name", "later", "busybox", "sh")
    assert created.returncode == 0, created.stderr
    s = open_session(sessions, engine, "start", "-ai", "later", rows=25, cols=77)
    s.expect(PROMPT)
    s.send(b"stty size; echo $((6*7))\r")
    s.expect(r"\r\n25 77\r\n42\r\n")
    s.send(b"exit 4\r")
    assert s.wait() == 4
    assert s.stty_g() == s.settings_before


def test_a_signal_to_engctl_ends_the_session_and_restores_the_terminal(
        engine: Daemon, sessions: list[PtySession]) -> None:
    s = open_session(sessions, engine, "run", "-it", "--name", "sig", "busybox", "sh")
    s.expect(PROMPT)
    s.proc.terminate()
    assert s.wait() == 128 + 15
    assert s.stty_g() == s.settings_before
    assert state(engine, "sig") == "running"  # as after a detach


def test_bad_detach_keys_are_refused_before_anything_runs(engine: Daemon, sessions: list[PtySession]) -> None:
    s = open_session(sessions, engine, "run", "-it", "--detach-keys", "ctrl-1", "--name", "nokeys",
                     "busybox", "sh")
    assert s.wait() == 125
    s.expect(r"invalid detach keys")
    assert s.stty_g() == s.settings_before
    assert engine.call("container.list", all=True) == []
