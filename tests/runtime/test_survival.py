"""The container outlives the process that created it (conmon is its parent), and a new
process adopts it: state, kill, wait_exit and read_exit work from the files alone."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
from pathlib import Path

import trio

from engine.oci.spec import build_spec

from .conftest import Ctr, Harness

CREATOR = """
import json, sys
from pathlib import Path
import trio
from engine.plugin import CreateRequest
from engine.plugins.crun.runtime import CrunRuntime
from engine.plugins.runc.runtime import RuncRuntime

name, state_root, cid, bundle = sys.argv[1:5]
runtime = (RuncRuntime if name == "runc" else CrunRuntime)(Path(state_root))

async def main():
    b = Path(bundle)
    created = await runtime.create(CreateRequest(cid, b, b, b / "ctr.log"))
    await runtime.start(cid)
    print(json.dumps([created.container_pid, created.monitor_pid]))

trio.run(main)
"""


def _ppid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


async def test_container_survives_its_creator(harness: Harness) -> None:
    cid, bundle, options = harness.options(["sh", "-c", "echo up; exec sleep 60"])
    await trio.to_thread.run_sync(
        lambda: shutil.copytree(harness.template, options.rootfs, symlinks=True)
    )
    spec = await trio.to_thread.run_sync(build_spec, options)
    (bundle / "config.json").write_text(json.dumps(spec))
    ctr = Ctr(cid, bundle, options.rootfs, bundle / "ctr.log", None, spec)  # type: ignore[arg-type]
    harness.containers.append(ctr)

    argv = [sys.executable, "-c", CREATOR, harness.runtime.name,
            str(harness.runtime.state_root), cid, str(bundle)]  # fmt: skip
    with trio.fail_after(20):
        result = await trio.run_process(argv, capture_stdout=True, capture_stderr=True)
    container_pid, monitor_pid = json.loads(result.stdout)
    # the creator has exited; conmon lives on, and it is not our child
    state = await harness.runtime.state(cid)
    assert state is not None and state.status == "running" and state.pid == container_pid
    assert _ppid(container_pid) == monitor_pid
    assert monitor_pid > 0 and _ppid(monitor_pid) != os.getpid()
    assert harness.runtime.read_exit(cid, bundle) is None

    await harness.runtime.kill(cid, signal.SIGKILL)
    with trio.fail_after(10):
        info = await harness.runtime.wait_exit(cid, bundle)
    assert info.exit_code == 137
    assert harness.runtime.read_exit(cid, bundle) == info
    assert (bundle / "ctr.log").read_text().split(" ", 3)[3] == "up\n"
