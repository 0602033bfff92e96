"""Supervision of container actors on trio's autojump clock.

The faults here are bugs inside the engine (a command that raises something no runtime
would), which the real runtimes cannot be made to show: the actor runs with injected
dependencies whose runtime is scripted. Everything else is the real actor, mailbox,
supervisor and on-disk state.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from engine.actors import commands as c
from engine.actors.container import ContainerActor
from engine.actors.deps import ActorDeps, ActorSettings, Registry
from engine.actors.events import Event
from engine.actors.model import ContainerConfig, ContainerStatus
from engine.actors.restart import BASE_DELAY, RESET_AFTER
from engine.actors.state import ContainerState
from engine.errors import InternalError, NotFound, Unavailable
from engine.plugin import Availability, Created, CreateRequest, ExitInfo, RuntimeState
from engine.supervisor.containers import ContainerSupervisor, SupervisionPolicy

S = ContainerState


@pytest.fixture
def clock() -> trio.testing.MockClock:
    """Virtual time that jumps once every task has been blocked for 20 ms of real time."""
    return trio.testing.MockClock(autojump_threshold=0.02)


@pytest.fixture(autouse=True)
def _inline_worker_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    """The actors and the supervisor write their state through trio.to_thread; a task
    waiting on a worker thread counts as blocked, so on a loaded machine (a write slower
    than the clock's 20 ms) the clock jumped to the next deadline mid-write: a run ended
    before it was recorded as started, a start hit its 30 s runtime_timeout. Here the few
    small writes run inline on the loop, and virtual time only moves when the actors wait."""

    async def run_inline(fn: Callable[..., Any], *args: Any, **_options: Any) -> Any:
        await trio.lowlevel.checkpoint_if_cancelled()  # as to_thread: cancelled before, never during
        result = fn(*args)
        await trio.lowlevel.cancel_shielded_checkpoint()
        return result

    monkeypatch.setattr(trio.to_thread, "run_sync", run_inline)


class ScriptedRuntime:
    """A Runtime whose containers run for ``run_for`` seconds (of the mock clock) and exit
    with ``exit_code``; ``faults`` maps a verb to an exception it raises (after ``delay``)."""

    name = "scripted"

    def __init__(self) -> None:
        self.run_for = math.inf
        self.exit_code = 0
        self.faults: dict[str, BaseException] = {}
        self.fault_delay = 0.0
        self.started: list[float] = []
        self._exits: dict[str, trio.Event] = {}
        self._codes: dict[str, int] = {}
        self._running: set[str] = set()

    async def _maybe_fail(self, verb: str) -> None:
        if verb in self.faults:
            await trio.sleep(self.fault_delay)
            raise self.faults[verb]

    def availability(self) -> Availability:
        return Availability.yes()

    def adapt_spec(self, spec: dict[str, Any]) -> dict[str, Any]:
        return spec

    async def create(self, request: CreateRequest) -> Created:
        return Created(container_pid=4242, monitor_pid=4243)

    async def create_when_ready(self, request: CreateRequest,
                                prepare_bundle: Callable[[], Awaitable[None]]) -> Created:
        await prepare_bundle()
        return await self.create(request)

    async def start(self, container_id: str) -> None:
        await self._maybe_fail("start")
        self.started.append(trio.current_time())
        self._exits[container_id] = trio.Event()
        self._running.add(container_id)
        run_for, code = self.run_for, self.exit_code

        async def run() -> None:
            await trio.sleep(run_for)
            self._finish(container_id, code)

        trio.lowlevel.spawn_system_task(run)

    def _finish(self, container_id: str, code: int) -> None:
        if container_id in self._running:
            self._running.discard(container_id)
            self._codes[container_id] = code
            self._exits[container_id].set()

    async def kill(self, container_id: str, signal: int, *, all_processes: bool = False) -> None:
        await self._maybe_fail("kill")
        self._finish(container_id, 128 + signal)

    async def pause(self, container_id: str) -> None:
        await self._maybe_fail("pause")

    async def resume(self, container_id: str) -> None:
        await self._maybe_fail("resume")

    async def delete(self, container_id: str, *, force: bool = False) -> None:
        pass

    async def state(self, container_id: str) -> RuntimeState | None:
        await self._maybe_fail("state")
        if container_id in self._running:
            return RuntimeState(container_id, "running", 4242)
        return None

    async def wait_exit(self, container_id: str, state_dir: Path) -> ExitInfo:
        await self._exits[container_id].wait()
        return ExitInfo(exit_code=self._codes[container_id], finished_at=time.time())

    def read_exit(self, container_id: str, state_dir: Path) -> ExitInfo | None:
        code = self._codes.get(container_id)
        return None if code is None else ExitInfo(exit_code=code, finished_at=time.time())

    def surviving_execs(self, container_id: str, work_dir: Path) -> list[Any]:
        return []

    async def exec(self, container_id: str, process: dict[str, Any], **options: Any) -> Any:
        raise NotImplementedError


class Runtimes:
    def __init__(self, runtime: ScriptedRuntime) -> None:
        self.runtime = runtime

    def usable(self, name: str) -> ScriptedRuntime:
        return self.runtime

    def installed(self, name: str) -> ScriptedRuntime:
        return self.runtime


class Rootfs:
    async def mount(self, container_id: str, layers: list[str]) -> Path:
        return Path("/nonexistent-rootfs")

    async def unmount(self, container_id: str) -> None:
        pass

    async def remove(self, container_id: str) -> None:
        pass


class Bundles:
    async def write_bundle(self, config: ContainerConfig, status: ContainerStatus, rootfs: Path,
                           bundle_dir: Path, runtime: Any) -> None:
        pass

    async def exec_process(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return {}


class Harness:
    def __init__(self, tmp_path: Path, policy: SupervisionPolicy | None = None) -> None:
        self.runtime = ScriptedRuntime()
        self.events: list[tuple[float, Event]] = []
        self.tmp = tmp_path

        def make_deps(registry: Registry) -> ActorDeps:
            return ActorDeps(
                runtimes=Runtimes(self.runtime),
                rootfs=Rootfs(),
                bundles=Bundles(),
                publish=lambda event: self.events.append((trio.current_time(), event)),
                registry=registry,
                container_dir=lambda cid: tmp_path / "containers" / cid,
                run_dir=lambda cid: tmp_path / "run" / cid,
                settings=ActorSettings(runtime_timeout=30, cleanup_timeout=30),
            )

        self.supervisor = ContainerSupervisor(tmp_path / "containers", make_deps, policy=policy)

    async def create(self, nursery: trio.Nursery, **config: Any) -> ContainerActor:
        await nursery.start(self.supervisor.run)
        base: dict[str, Any] = dict(id="", name="ctr", image="busybox", image_id="sha256:x",
                                    created=time.time(), runtime="scripted")
        return await self.supervisor.create(ContainerConfig(**{**base, **config}))

    def actions(self, action: str) -> list[tuple[float, Event]]:
        return [(t, e) for t, e in self.events if e.action == action]


async def test_a_command_that_raises_fails_every_pending_caller_at_once(
        tmp_path: Path, clock: trio.testing.MockClock) -> None:
    h = Harness(tmp_path)
    outcomes: dict[str, BaseException | object] = {}
    finished_at: dict[str, float] = {}
    async with trio.open_nursery() as nursery:
        actor = await h.create(nursery)
        await actor.call(c.Start())
        h.runtime.faults["pause"] = KeyError("a bug")
        h.runtime.fault_delay = 5.0

        async def caller(name: str, call: Callable[[], Awaitable[Any]]) -> None:
            try:
                outcomes[name] = await call()
            except Exception as e:  # noqa: BLE001 - the error is what is checked
                outcomes[name] = e
            finished_at[name] = trio.current_time()

        nursery.start_soon(caller, "pause", lambda: actor.call(c.Pause()))
        await trio.sleep(0.01)  # pause is in flight; the rest queue behind it
        for name, command in (("stop", c.Stop(1)), ("kill", c.Kill(9)), ("rename", c.Rename("x"))):
            nursery.start_soon(caller, name, lambda command=command: actor.call(command))
        nursery.start_soon(caller, "wait", lambda: actor.wait_for(lambda s: s.state == S.EXITED))
        await trio.sleep(0.01)
        crash_time = trio.current_time() + 5.0
        with trio.fail_after(30):
            while len(outcomes) < 5:  # noqa: ASYNC110 - polling the test's own dict
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert isinstance(outcomes["pause"], InternalError)
    assert "KeyError" in str(outcomes["pause"]) and "a bug" in str(outcomes["pause"])
    for name in ("stop", "kill", "rename", "wait"):
        error = outcomes[name]
        assert isinstance(error, Unavailable), (name, error)
        assert "crashed" in str(error) and "KeyError" in str(error), (name, error)
        assert finished_at[name] - crash_time < 1.0, (name, finished_at[name] - crash_time)


async def restarted(h: Harness, crashed: Any, within: float = 30.0) -> Any:
    """The actor the supervisor put in ``crashed``'s place, once it has one: the restart
    reads the disk through worker threads, which a loaded machine may keep past the
    clock's 20 ms (the clock then jumps), so a fixed sleep can come too early."""
    with trio.fail_after(within):
        while True:
            fresh = h.supervisor.get("ctr")
            if fresh is not crashed and fresh.crashed is None:
                return fresh
            await trio.sleep(0.1)


async def test_a_crashed_actor_is_restarted_from_disk_and_the_container_keeps_running(
        tmp_path: Path, clock: trio.testing.MockClock) -> None:
    h = Harness(tmp_path)
    async with trio.open_nursery() as nursery:
        actor = await h.create(nursery)
        await actor.call(c.Start())
        h.runtime.faults["pause"] = RuntimeError("bug")
        with pytest.raises(InternalError):
            await actor.call(c.Pause())
        del h.runtime.faults["pause"]
        fresh = await restarted(h, actor)
        assert fresh is not actor and fresh.crashed is None
        await trio.sleep(0.1)
        assert fresh.status.state == S.RUNNING  # adopted: the runtime says it runs
        result = await fresh.call(c.Stop(1))
        assert result["stopped"] is True and fresh.status.state == S.EXITED
        assert [e.attributes["reason"] for _, e in h.actions("actor_crash")] == ["RuntimeError: bug"]
        nursery.cancel_scope.cancel()


async def test_a_crash_loop_stops_at_the_intensity_limit_with_backoff(
        tmp_path: Path, clock: trio.testing.MockClock) -> None:
    policy = SupervisionPolicy(max_restarts=3, window=60.0, base_backoff=0.5, max_backoff=10.0)
    h = Harness(tmp_path, policy)
    async with trio.open_nursery() as nursery:
        actor = await h.create(nursery)
        await actor.call(c.Start())
        h.runtime.faults["state"] = RuntimeError("adoption bug")  # every fresh actor crashes
        h.runtime.faults["pause"] = RuntimeError("first bug")
        with pytest.raises(InternalError):
            await actor.call(c.Pause())
        await trio.sleep(60)
        crashes = h.actions("actor_crash")
        give_up = h.actions("actor_give_up")
        assert len(crashes) == 4 and len(give_up) == 1  # the first crash + 3 restarts
        gaps = [b[0] - a[0] for a, b in zip(crashes, crashes[1:], strict=False)]
        for gap, expected in zip(gaps, (0.5, 1.0, 2.0), strict=True):
            assert expected <= gap <= expected * 1.1 + 0.01, gaps
        last = h.supervisor.get("ctr")
        assert "stopped supervising" in last.status.error and "adoption bug" in last.status.error
        on_disk = last.files.read_status()
        assert "stopped supervising" in on_disk.error
        with pytest.raises(Unavailable, match="stopped supervising"):
            await last.call(c.Stop(1))
        await trio.sleep(120)
        assert len(h.actions("actor_crash")) == 4  # no more restarts
        nursery.cancel_scope.cancel()


async def test_crashes_older_than_the_window_are_forgotten(
        tmp_path: Path, clock: trio.testing.MockClock) -> None:
    policy = SupervisionPolicy(max_restarts=1, window=10.0, base_backoff=0.5)
    h = Harness(tmp_path, policy)
    async with trio.open_nursery() as nursery:
        actor = await h.create(nursery)
        await actor.call(c.Start())
        h.runtime.faults["pause"] = RuntimeError("rare bug")
        for _ in range(3):  # one crash every 20 s: never two within the window
            with pytest.raises(InternalError):
                await h.supervisor.get("ctr").call(c.Pause())
            await trio.sleep(20)
        assert len(h.actions("actor_crash")) == 3 and not h.actions("actor_give_up")
        assert all(e.attributes["crashes"] == 1 for _, e in h.actions("actor_crash"))
        nursery.cancel_scope.cancel()


async def test_restart_policy_backoff_grows_and_resets_after_a_long_run(
        tmp_path: Path, clock: trio.testing.MockClock) -> None:
    h = Harness(tmp_path)
    h.runtime.run_for = 1.0
    h.runtime.exit_code = 3
    async with trio.open_nursery() as nursery:
        actor = await h.create(nursery, restart_policy="always")
        await actor.call(c.Start())
        await trio.sleep(20)
        delays = [e.attributes["delay"] for _, e in h.actions("restarting")]
        assert len(delays) >= 4
        for attempt, delay in enumerate(delays[:4]):
            expected = BASE_DELAY * 2**attempt
            assert expected <= delay <= expected * 1.1 + 1e-3, delays
        gaps = [b - a for a, b in zip(h.runtime.started, h.runtime.started[1:], strict=False)]
        for gap, delay in zip(gaps, delays, strict=False):
            assert gap == pytest.approx(1.0 + delay, abs=0.01)  # run + backoff, exactly
        # a run longer than RESET_AFTER resets the backoff
        h.runtime.run_for = RESET_AFTER + 1
        before = len(delays)
        await trio.sleep(300)
        delays = [e.attributes["delay"] for _, e in h.actions("restarting")]
        assert any(BASE_DELAY <= d <= BASE_DELAY * 1.1 + 1e-3 for d in delays[before + 1:]), delays
        assert h.supervisor.get("ctr").status.restart_count >= before
        nursery.cancel_scope.cancel()


async def test_exit_notices_are_never_dropped_by_a_full_mailbox(
        tmp_path: Path, clock: trio.testing.MockClock) -> None:
    h = Harness(tmp_path)
    h.runtime.run_for = 1.0
    h.runtime.exit_code = 7
    async with trio.open_nursery() as nursery:
        actor = await h.create(nursery)
        await actor.call(c.Start())
        # 200 commands around the exit: the mailbox holds 64 and refuses the rest
        refused = 0

        async def rename(i: int) -> None:
            nonlocal refused
            try:
                await actor.call(c.Rename(f"n{i}"))
            except Exception:  # noqa: BLE001 - a full mailbox refuses; that is fine
                refused += 1

        for i in range(200):
            nursery.start_soon(rename, i)
        with trio.fail_after(30):
            status = await actor.wait_for(lambda s: s.state == S.EXITED)
        assert status.exit_code == 7
        assert actor.files.read_status().state == S.EXITED
        assert refused > 0  # the mailbox was full while the exit came in
        nursery.cancel_scope.cancel()


async def test_a_removed_container_fails_queued_calls_with_not_found(
        tmp_path: Path, clock: trio.testing.MockClock) -> None:
    h = Harness(tmp_path)
    async with trio.open_nursery() as nursery:
        actor = await h.create(nursery)
        await actor.call(c.Remove())
        with pytest.raises(NotFound):
            await actor.call(c.Start())
        with pytest.raises(NotFound):
            h.supervisor.get("ctr")
        nursery.cancel_scope.cancel()

