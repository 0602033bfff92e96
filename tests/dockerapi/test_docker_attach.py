"""Attached and interactive containers through the Docker API, with the real docker CLI:
``docker run`` without -d (output, exit code, --rm), ``run -i`` through pipes, ``run -it``,
``attach`` and ``exec -it`` through a real pseudo-terminal (window size, detach keys),
``start -a``, ``exec -i``; and docker-py's attach sockets."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import DOCKER_CLIENTS, Engine, EngineFactory, docker_clients
from .pty_docker import DockerPty


@pytest.fixture
def engine(make_engine: EngineFactory, busybox_archive: Path) -> Engine:
    return make_engine(load_busybox=busybox_archive)


@pytest.fixture
def terminals() -> Iterator[list[DockerPty]]:
    opened: list[DockerPty] = []
    try:
        yield opened
    finally:
        for term in opened:
            term.close()


def open_terminal(terminals: list[DockerPty], engine: Engine, *args: str, rows: int = 24, cols: int = 80,
                  binary: str = DOCKER_CLIENTS[0]) -> DockerPty:
    term = DockerPty([binary, *args], engine.env(), rows=rows, cols=cols)
    terminals.append(term)
    return term


def state(engine: Engine, name: str) -> str:
    return str(engine.daemon.call("container.inspect", id=name)["State"]["Status"])


def wait_state(engine: Engine, name: str, wanted: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while state(engine, name) != wanted:
        assert time.monotonic() < deadline, f"{name} is {state(engine, name)}, not {wanted}"
        time.sleep(0.1)


@pytest.mark.parametrize("binary", docker_clients())
def test_run_attached_streams_output_and_exits_with_the_code(engine: Engine, binary: str) -> None:
    hi = engine.docker("run", "--rm", "busybox", "echo", "hi", binary=binary)
    assert (hi.returncode, hi.stdout) == (0, "hi\n")
    both = engine.docker("run", "--rm", "busybox", "sh", "-c", "echo out; echo err >&2; exit 7",
                         binary=binary, check=False)
    assert (both.returncode, both.stdout, both.stderr) == (7, "out\n", "err\n")
    # --rm: nothing is left; without it the container stays, exited with its code
    assert engine.daemon.call("container.list", all=True) == []
    kept = engine.docker("run", "--name", "kept", "busybox", "sh", "-c", "seq 1 2000; exit 3",
                         binary=binary, check=False)
    assert kept.returncode == 3
    assert kept.stdout.splitlines() == [str(i) for i in range(1, 2001)]  # not a line missed
    assert engine.daemon.call("container.inspect", id="kept")["State"]["ExitCode"] == 3
    # start -a: the same container again, attached
    again = engine.docker("start", "-a", "kept", binary=binary, check=False)
    assert again.returncode == 3 and again.stdout.splitlines()[-1] == "2000"
    engine.docker("rm", "kept", binary=binary)
    missing = engine.docker("run", "--rm", "busybox", "no-such-command", binary=binary, check=False)
    assert missing.returncode == 127
    assert engine.daemon.call("container.list", all=True) == []


def test_run_attached_gets_every_byte_of_a_fast_writer(engine: Engine) -> None:
    """The attached output comes from conmon's attach socket, not from the rotating log
    (10 MiB x 3 by default): 30 MB written in about a second arrive whole, each stream in
    order, and a container that exits at once never loses its line."""
    fast = engine.docker("run", "--rm", "busybox", "sh", "-c", "yes | head -c 30000000; echo done >&2")
    assert (len(fast.stdout), fast.stdout == "y\n" * 15_000_000, fast.stderr) == (30_000_000, True, "done\n")
    both = engine.docker("run", "--rm", "busybox", "sh", "-c",
                         "i=0; while [ $i -lt 5000 ]; do echo o$i; echo e$i >&2; i=$((i+1)); done; exit 4",
                         check=False)
    assert both.returncode == 4
    assert both.stdout.split() == [f"o{i}" for i in range(5000)]
    assert both.stderr.split() == [f"e{i}" for i in range(5000)]
    for attempt in range(10):
        assert engine.docker("run", "--rm", "busybox", "echo", f"hi {attempt}").stdout == f"hi {attempt}\n"


@pytest.mark.parametrize("binary", docker_clients())
def test_run_i_and_exec_i_pipe_stdin(engine: Engine, binary: str) -> None:
    data = "".join(f"line {i}\n" for i in range(5000))
    piped = engine.docker("run", "--rm", "-i", "busybox", "sh", "-c", "wc -l; echo done >&2",
                          input=data, binary=binary)
    assert piped.stdout.strip() == "5000" and piped.stderr == "done\n"
    engine.docker("run", "-d", "--name", "box", "busybox", "sleep", "300", binary=binary)
    ex = engine.docker("exec", "-i", "box", "sh", "-c", "tr a-z A-Z; exit 4", input="hello\n",
                       binary=binary, check=False)
    assert (ex.returncode, ex.stdout) == (4, "HELLO\n")
    engine.docker("rm", "-f", "box", binary=binary)


def test_run_it_through_a_terminal_resizes_and_exits_with_the_code(engine: Engine,
                                                                    terminals: list[DockerPty]) -> None:
    term = open_terminal(terminals, engine, "run", "-it", "--rm", "--name", "tty", "busybox", "sh",
                         rows=30, cols=100)
    term.expect(r"/ # ")
    term.send(b"stty size; tty\r")
    term.expect(r"30 100\r\n/dev/pts/\d+")
    inspected = json.loads(engine.docker("inspect", "tty").stdout)[0]
    assert inspected["Config"]["Tty"] is True and inspected["Config"]["OpenStdin"] is True
    term.resize(40, 120)  # the CLI gets SIGWINCH and posts /resize
    deadline = time.monotonic() + 10
    while True:
        term.send(b"stty size\r")
        try:
            term.expect(r"40 120", timeout=1)
            break
        except AssertionError:
            assert time.monotonic() < deadline, "the new window size never reached the container"
    term.send(b"exit 3\r")
    assert term.wait() == 3
    deadline = time.monotonic() + 10
    while engine.daemon.call("container.list", all=True):
        assert time.monotonic() < deadline, "the --rm container was not removed"
        time.sleep(0.1)


def test_attach_and_detach_keys_leave_the_container_running(engine: Engine, terminals: list[DockerPty]) -> None:
    engine.docker("run", "-dit", "--name", "shell", "busybox", "sh")
    term = open_terminal(terminals, engine, "attach", "shell")
    term.send(b"echo attached-$((6*7))\r")
    term.expect(r"attached-42")
    term.send(b"\x10\x11")  # ctrl-p ctrl-q
    term.wait()
    assert state(engine, "shell") == "running"
    # attach again, and this time the shell ends: attach returns its code
    term = open_terminal(terminals, engine, "attach", "shell")
    term.send(b"exit 5\r")
    assert term.wait() == 5
    wait_state(engine, "shell", "exited")
    engine.docker("rm", "shell")


def test_exec_it_through_a_terminal(engine: Engine, terminals: list[DockerPty]) -> None:
    engine.docker("run", "-d", "--name", "host", "busybox", "sleep", "300")
    term = open_terminal(terminals, engine, "exec", "-it", "host", "sh", rows=33, cols=91)
    term.expect(r"/ # ")
    term.send(b"stty size; echo $TERM\r")
    term.expect(r"33 91\r\nxterm")
    term.resize(20, 70)
    deadline = time.monotonic() + 10
    while True:
        term.send(b"stty size\r")
        try:
            term.expect(r"20 70", timeout=1)
            break
        except AssertionError:
            assert time.monotonic() < deadline, "the exec's window size never changed"
    term.send(b"exit 9\r")
    assert term.wait() == 9
    assert state(engine, "host") == "running"
    engine.docker("rm", "-f", "host")


def test_docker_py_attach_socket_and_exec_with_stdin(engine: Engine) -> None:
    client = engine.docker_py()
    try:
        ctr = client.containers.run("busybox", ["sh", "-c", "read line; echo got:$line; echo bye >&2"],
                                    stdin_open=True, detach=True, name="py")
        sock = ctr.attach_socket(params={"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1})
        raw = sock._sock
        raw.sendall(b"hello\n")
        frames = b""
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            chunk = raw.recv(65536)
            if not chunk:
                break
            frames += chunk
        raw.close()
        # stdcopy: [stream, 0, 0, 0, size] + data
        streams: dict[int, bytes] = {}
        while frames:
            kind, size = frames[0], int.from_bytes(frames[4:8], "big")
            streams[kind] = streams.get(kind, b"") + frames[8:8 + size]
            frames = frames[8 + size:]
        assert streams == {1: b"got:hello\n", 2: b"bye\n"}
        assert ctr.wait()["StatusCode"] == 0
        ctr.remove()
        # exec with a terminal through the API: the output is raw, not multiplexed
        box = client.containers.run("busybox", ["sleep", "300"], detach=True)
        code, out = box.exec_run(["sh", "-c", "tty >/dev/null && echo has-tty"], tty=True)
        assert (code, out) == (0, b"has-tty\r\n")
        box.remove(force=True)
    finally:
        client.close()


def test_attach_errors(engine: Engine) -> None:
    engine.docker("create", "--name", "idle", "busybox", "true")
    bad = engine.docker("attach", "--detach-keys", "ctrl-", "idle", check=False)
    assert bad.returncode != 0
    stopped = engine.docker("attach", "idle", check=False)
    assert stopped.returncode != 0 and "cannot attach to a stopped container" in stopped.stderr.lower()
    no_tty = engine.docker("exec", "-d", "idle", "true", check=False)
    assert no_tty.returncode != 0 and "not running" in no_tty.stderr
    engine.docker("rm", "idle")
