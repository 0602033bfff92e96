"""Life cycle through conmon: output, exit codes, signals, pause, exec, errors."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import trio

from engine.errors import NotFound, RuntimeFailure
from engine.oci.cli_runtime import CLIRuntime

from .conftest import Harness, read_log, wait_until


async def test_output_goes_to_log_and_exit_code_is_recorded(harness: Harness) -> None:
    ctr, info = await harness.run(["sh", "-c", "echo hi; echo oops >&2; exit 3"])
    assert info.exit_code == 3
    assert not info.oom_killed and info.signal is None and info.finished_at
    assert read_log(ctr.log_path) == ("hi\n", "oops\n")
    assert harness.runtime.read_exit(ctr.id, ctr.state_dir) == info
    state = await harness.runtime.state(ctr.id)
    assert state is not None and state.status == "stopped"


async def test_created_then_running(harness: Harness) -> None:
    ctr = await harness.create(["sleep", "60"])
    state = await harness.runtime.state(ctr.id)
    assert state is not None and state.status == "created"
    assert state.pid == ctr.created.container_pid and ctr.created.monitor_pid > 0
    assert harness.runtime.read_exit(ctr.id, ctr.state_dir) is None
    await harness.runtime.start(ctr.id)
    state = await harness.runtime.state(ctr.id)
    assert state is not None and state.status == "running"
    await harness.runtime.kill(ctr.id, signal.SIGKILL)
    with trio.fail_after(10):
        info = await harness.runtime.wait_exit(ctr.id, ctr.state_dir)
    assert info.exit_code == 137 and info.signal == signal.SIGKILL


async def test_sigterm_through_init(harness: Harness) -> None:
    # pid 1 ignores signals it has no handler for; catatonit forwards them to the command
    ctr = await harness.create(["sleep", "60"], init=True)
    await harness.runtime.start(ctr.id)
    children = Path(f"/proc/{ctr.created.container_pid}/task/{ctr.created.container_pid}/children")
    with trio.fail_after(10):  # until catatonit runs the command (and handles signals)
        await wait_until(lambda: children.read_text().strip())
    await harness.runtime.kill(ctr.id, signal.SIGTERM)
    with trio.fail_after(10):
        info = await harness.runtime.wait_exit(ctr.id, ctr.state_dir)
    assert info.exit_code == 128 + signal.SIGTERM


async def test_pause_and_resume(harness: Harness) -> None:
    ctr = await harness.create(["sleep", "60"])
    await harness.runtime.start(ctr.id)
    await harness.runtime.pause(ctr.id)
    state = await harness.runtime.state(ctr.id)
    assert state is not None and state.status == "paused"
    await harness.runtime.resume(ctr.id)
    state = await harness.runtime.state(ctr.id)
    assert state is not None and state.status == "running"


async def test_exec_returns_output_and_exit_code(harness: Harness) -> None:
    ctr = await harness.create(["sleep", "60"], env=["FROM_SPEC=1"])
    await harness.runtime.start(ctr.id)
    handle = await harness.runtime.exec(
        ctr.id, {"args": ["sh", "-c", "echo out; echo err >&2; exit 5"]}, work_dir=ctr.bundle
    )
    async with handle:
        with trio.fail_after(10):
            code, out, err = await handle.communicate()
    assert (code, out, err) == (5, b"out\n", b"err\n")
    assert not list(ctr.bundle.glob("exec-*"))  # temp process/pid files are gone


async def test_exec_kill(harness: Harness) -> None:
    ctr = await harness.create(["sleep", "60"])
    await harness.runtime.start(ctr.id)
    handle = await harness.runtime.exec(ctr.id, {"args": ["sleep", "60"]}, work_dir=ctr.bundle)
    async with handle:
        with trio.fail_after(10):
            await wait_until(lambda: handle.pid is not None)
            await handle.kill(signal.SIGKILL)
            code = await handle.wait()
    assert code == 137


async def test_unknown_container(runtime: CLIRuntime) -> None:
    assert await runtime.state("engtest-nope") is None
    with pytest.raises(NotFound):
        await runtime.kill("engtest-nope", signal.SIGKILL)
    with pytest.raises(NotFound):
        await runtime.delete("engtest-nope")
    await runtime.delete("engtest-nope", force=True)  # idempotent


async def test_create_failure_carries_runtime_text(harness: Harness) -> None:
    with pytest.raises(RuntimeFailure) as caught:
        await harness.create(["/no/such/binary"])
    assert "/no/such/binary" in str(caught.value) or "no such file" in str(caught.value).lower()
