"""A real engined per runtime (runc, crun) with busybox loaded, for sessions driven through
a pseudo-terminal or pipes. After each test: no container, no conmon and no exec console
socket of the daemon is left."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.testing.daemon import Daemon, processes_mentioning
from tests.containers.conftest import busybox_archive, start_engine  # noqa: F401 (fixture)
from tests.interactive.pty_session import ENGCTL

RUNTIMES = ["runc", "crun"]


@pytest.fixture(params=RUNTIMES)
def engine(request: pytest.FixtureRequest, busybox_archive: Path) -> Iterator[Daemon]:  # noqa: F811
    d = start_engine(busybox_archive, request.param)
    try:
        yield d
        assert_nothing_left(d)
    finally:
        d.cleanup()


def conmons(d: Daemon) -> list[int]:
    return [pid for pid in processes_mentioning(str(d.run_root)) if _name(pid) == "conmon"]


def _name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def assert_nothing_left(d: Daemon) -> None:
    """Once every container is removed: no conmon, no run directory, no socket."""
    for summary in d.call("container.list", all=True):
        d.call("container.remove", id=summary["Id"], force=True)
    run_dirs = d.run_root / "containers"

    def leftovers() -> tuple[list[int], list[Path], list[Path]]:
        sockets = [path for path in _files(d.run_root) if path.is_socket() and path.name != "engine.sock"]
        dirs = list(run_dirs.iterdir()) if run_dirs.exists() else []
        return conmons(d), sockets, dirs

    # a --rm container is gone for everyone at once; its files follow a moment later
    deadline = time.monotonic() + 10
    while leftovers() != ([], [], []) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert leftovers() == ([], [], [])


def _files(top: Path) -> list[Path]:
    # os.walk, not rglob: a --rm container's directories may vanish while we look
    return [Path(root) / name for root, _, names in os.walk(top) for name in names]


def engctl(d: Daemon, *argv: str, input: bytes | None = None, stdin: object = None,
           timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "ENGINE_HOST": d.host}
    return subprocess.run([*ENGCTL, *argv], input=input, stdin=stdin, capture_output=True, env=env,
                          timeout=timeout)
