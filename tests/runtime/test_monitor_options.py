"""What the engine hands conmon besides the container: the log's fsync and the environment."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import trio

from engine.oci.conmon import MonitorFiles, conmon_argv
from engine.plugin import CreateRequest

from .conftest import Harness


def request(tmp_path: Path, **kw: bool) -> CreateRequest:
    return CreateRequest(container_id="c1", bundle=tmp_path, state_dir=tmp_path,
                         log_path=tmp_path / "ctr.log", **kw)  # fmt: skip


def test_the_log_of_a_container_removed_on_exit_is_not_fsynced(tmp_path: Path) -> None:
    files = MonitorFiles(tmp_path, "c1")
    kept = conmon_argv(request(tmp_path), files, "/usr/sbin/runc", [])
    removed = conmon_argv(request(tmp_path, sync_log=False), files, "/usr/sbin/runc", [])
    assert "--no-sync-log" not in kept
    assert removed == [*kept, "--no-sync-log"]


async def test_the_monitor_does_not_inherit_a_systemd_notify_socket(
    harness: Harness, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify.sock"))
    ctr = await harness.create(["sleep", "60"])
    environ_file = trio.Path(f"/proc/{ctr.created.monitor_pid}/environ")
    environ = (await environ_file.read_bytes()).split(b"\0")
    assert any(e.startswith(b"_OCI_SYNCPIPE=") for e in environ)  # it is conmon's environment
    assert not any(e.startswith(b"NOTIFY_SOCKET=") for e in environ)
    await harness.runtime.start(ctr.id)
    await harness.runtime.kill(ctr.id, signal.SIGKILL)
    with trio.fail_after(10):
        info = await harness.runtime.wait_exit(ctr.id, ctr.state_dir)
    assert info.exit_code == 137
