"""runc's start without ``runc start``: the daemon releases a container it created through
runc's exec fifo (engine.oci.exec_fifo); runc must agree on the result."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import trio

from engine.errors import Conflict, RuntimeFailure
from engine.oci.cli_runtime import CLIRuntime
from engine.plugins.runc.runtime import RuncRuntime

from .conftest import Harness, read_log

pytestmark = pytest.mark.parametrize("runtime", ["runc"], indirect=True)


def record_verbs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The verbs the runtime runs as ``runc VERB`` processes."""
    verbs: list[str] = []
    run = CLIRuntime._run

    async def recording(self: CLIRuntime, *args: str) -> bytes:
        verbs.append(args[0])
        return await run(self, *args)

    monkeypatch.setattr(CLIRuntime, "_run", recording)
    return verbs


async def test_start_releases_the_created_container_without_runc_start(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    verbs = record_verbs(monkeypatch)
    ctr = await harness.create(["sh", "-c", "echo started; sleep 60"])
    fifo = harness.runtime.state_root / ctr.id / "exec.fifo"  # type: ignore[attr-defined]
    assert fifo.exists()
    await harness.runtime.start(ctr.id)
    assert "start" not in verbs
    assert not fifo.exists()
    state = await harness.runtime.state(ctr.id)
    assert state is not None and state.status == "running"  # runc's own view agrees
    with trio.fail_after(10):
        while "started" not in read_log(ctr.log_path)[0]:  # noqa: ASYNC110 - a file, no event
            await trio.sleep(0.01)
    # a second start is refused by runc itself, as for any running container
    with pytest.raises(Conflict):
        await harness.runtime.start(ctr.id)
    assert verbs.count("start") == 1
    await harness.runtime.kill(ctr.id, signal.SIGKILL)
    with trio.fail_after(10):
        info = await harness.runtime.wait_exit(ctr.id, ctr.state_dir)
    assert info.exit_code == 137


async def test_exit_code_and_output_of_a_quick_command(harness: Harness) -> None:
    ctr, info = await harness.run(["sh", "-c", "echo out; exit 7"])
    assert info.exit_code == 7
    assert read_log(ctr.log_path)[0] == "out\n"


async def test_init_killed_before_start_is_a_runtime_failure(harness: Harness) -> None:
    ctr = await harness.create(["true"])
    await harness.runtime.kill(ctr.id, signal.SIGKILL)
    with trio.fail_after(10), pytest.raises(RuntimeFailure, match="died before it could be started"):
        await harness.runtime.start(ctr.id)


async def test_a_container_created_by_an_earlier_daemon_starts_with_runc_start(
    harness: Harness, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    verbs = record_verbs(monkeypatch)
    ctr = await harness.create(["sh", "-c", "echo later"])
    assert isinstance(harness.runtime, RuncRuntime)
    fresh = RuncRuntime(harness.runtime.state_root)  # what a restarted daemon has
    await fresh.start(ctr.id)
    assert verbs == ["start"]
    with trio.fail_after(10):
        info = await fresh.wait_exit(ctr.id, ctr.state_dir)
    assert info.exit_code == 0
    assert read_log(ctr.log_path)[0] == "later\n"
