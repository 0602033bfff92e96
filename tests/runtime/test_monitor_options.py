"""What the engine hands conmon besides the container: the log's fsync and the environment."""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path

import pytest
import trio

from engine.errors import RuntimeFailure
from engine.oci.conmon import MonitorFiles, conmon_argv
from engine.oci.spec import build_spec
from engine.plugin import Created, CreateRequest

from .conftest import Ctr, Harness, read_log, stray_conmons


def stray_conmons_of(container_id: str) -> list[int]:
    return [pid for pid in stray_conmons()
            if container_id.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()]


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


async def test_conmon_starts_before_the_bundle_exists_and_waits_for_it(
    harness: Harness, busybox_template: Path
) -> None:
    cid, bundle, options = harness.options(["sh", "-c", "echo ready"])
    request = CreateRequest(container_id=cid, bundle=bundle, state_dir=bundle,
                            log_path=bundle / "ctr.log")  # fmt: skip
    bundle.mkdir()  # conmon's cwd; the bundle's config.json comes later
    harness.containers.append(Ctr(cid, bundle, options.rootfs, request.log_path, Created(0, 0), {}))
    waited: list[bool] = []

    async def write_bundle_late() -> None:
        await trio.sleep(0.2)  # conmon is up meanwhile, blocked on its start pipe
        waited.append(bool(stray_conmons_of(cid)))
        await trio.to_thread.run_sync(
            lambda: shutil.copytree(busybox_template, options.rootfs, symlinks=True))
        spec = build_spec(options)
        await trio.Path(bundle / "config.json").write_text(json.dumps(spec))

    created = await harness.runtime.create_when_ready(request, write_bundle_late)  # type: ignore[attr-defined]
    assert waited == [True]
    await harness.runtime.start(cid)
    with trio.fail_after(10):
        info = await harness.runtime.wait_exit(cid, bundle)
    assert info.exit_code == 0 and created.container_pid > 0
    assert read_log(request.log_path)[0] == "ready\n"


async def test_conmon_is_killed_when_the_bundle_never_comes(harness: Harness) -> None:
    cid, bundle, _ = harness.options(["true"])
    bundle.mkdir()
    request = CreateRequest(container_id=cid, bundle=bundle, state_dir=bundle,
                            log_path=bundle / "ctr.log")  # fmt: skip

    async def preparation_fails() -> None:
        await trio.sleep(0.1)
        raise RuntimeFailure("overlay mount failed")

    with pytest.raises(RuntimeFailure, match="overlay mount failed"):
        await harness.runtime.create_when_ready(request, preparation_fails)  # type: ignore[attr-defined]
    assert stray_conmons_of(cid) == []
    assert await harness.runtime.state(cid) is None  # the runtime never heard of it
