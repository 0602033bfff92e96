"""The container actor: the only code that changes one container.

Commands arrive in a mailbox and run one at a time, so concurrent stop/kill/rm on one
container cannot race. Each transition is written to disk (atomically) before it is
reported and emitted as an event. While the container runs, a watcher task waits for its
exit (through the runtime's monitor, which outlives the daemon) and posts the exit to the
mailbox like any other command; the restart policy is applied there.
"""

from __future__ import annotations

import logging
import signal as signals
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import trio

from engine.actors.events import Event
from engine.actors.model import ContainerConfig, ContainerFiles, ContainerStatus
from engine.actors.state import ACTIVE, ContainerState, can_transition, require_state
from engine.errgroup import unwrap_engine_errors
from engine.errors import Conflict, EngineError, InvalidArgument, NotFound, RuntimeFailure
from engine.plugin import Created, CreateRequest, ExitInfo, Runtime
from engine.supervisor.restart import Restart, RestartPolicy, decide

if TYPE_CHECKING:
    from engine.supervisor.containers import ContainerSupervisor

log = logging.getLogger("engine.container")

S = ContainerState
MAILBOX_SIZE = 64
KILL_WAIT = 10.0  # after SIGKILL, how long an exit may take before we call it stuck


def parse_signal(value: str | int) -> int:
    if isinstance(value, int):
        return value
    text = str(value).strip().upper()
    if text.isdigit():
        return int(text)
    name = text if text.startswith("SIG") else "SIG" + text
    try:
        return int(signals.Signals[name])
    except KeyError:
        raise InvalidArgument(f"invalid signal {value!r}: use a name like SIGTERM or KILL, or a number") from None


@attrs.define
class Command:
    name: str
    args: dict[str, Any] = attrs.field(factory=dict)
    done: trio.Event = attrs.field(factory=trio.Event)
    result: Any = None
    error: BaseException | None = None
    internal: bool = False


class ContainerActor:
    def __init__(self, supervisor: ContainerSupervisor, config: ContainerConfig,
                 status: ContainerStatus) -> None:
        self.sup = supervisor
        self.app = supervisor.app
        self.config = config
        self.status = status
        self.files = ContainerFiles(self.app.layout.container_dir(config.id))
        self.run_dir = self.app.layout.run_container_dir(config.id)
        self.bundle_dir = self.run_dir / "bundle"
        self._send, self._receive = trio.open_memory_channel[Command](MAILBOX_SIZE)
        self._changed = trio.Event()
        self._watch_scope: trio.CancelScope | None = None
        self._restart_scope: trio.CancelScope | None = None
        self._nursery: trio.Nursery | None = None
        self.attached = 0  # readers following the output of an attached run
        self._attached_done = trio.Event()
        self.removed = False
        # Whether the runtime may hold state for this container: unknown (None) for a
        # container read from disk, False for a new one, True once created there.
        self.runtime_knows: bool | None = None

    # --- public surface (called from RPC handlers) -----------------------------------------

    @property
    def id(self) -> str:
        return self.config.id

    @property
    def name(self) -> str:
        return self.config.name

    async def call(self, name: str, **args: Any) -> Any:
        """Queue a command and wait for its result (under the caller's deadline)."""
        if self.removed:
            raise NotFound(f"no such container: {self.name}")
        cmd = Command(name, args)
        try:
            self._send.send_nowait(cmd)
        except trio.WouldBlock:
            raise Conflict(f"container {self.name} has too many pending commands; retry later") from None
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise NotFound(f"no such container: {self.name}") from None
        await cmd.done.wait()
        if cmd.error is not None:
            raise cmd.error
        return cmd.result

    def post(self, name: str, **args: Any) -> None:
        """Queue an internal command (exit seen, policy restart) without waiting."""
        try:
            self._send.send_nowait(Command(name, args, internal=True))
        except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
            log.warning("dropped internal %s for %s", name, self.name)

    def changes(self) -> trio.Event:
        """An event set at the next change of status (persisted) or at removal."""
        return self._changed

    async def wait_for(self, predicate: Callable[[ContainerStatus], bool]) -> ContainerStatus:
        while not predicate(self.status) and not self.removed:
            changed = self._changed
            await changed.wait()
        return self.status

    # --- the actor's life --------------------------------------------------------------------

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started(self)
            async for cmd in self._receive:
                await self._execute(cmd)
                if self.removed:
                    break
            self._fail_pending()
            nursery.cancel_scope.cancel()

    def _fail_pending(self) -> None:
        self._send.close()
        while True:
            try:
                cmd = self._receive.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                break
            cmd.error = NotFound(f"no such container: {self.name} (it was removed)")
            cmd.done.set()

    async def _execute(self, cmd: Command) -> None:
        handler: Callable[..., Awaitable[Any]] = getattr(self, f"_do_{cmd.name}")
        try:
            cmd.result = await handler(**cmd.args)
        except EngineError as e:
            cmd.error = e
        except Exception as e:
            log.exception("container %s: %s failed", self.name, cmd.name)
            cmd.error = RuntimeFailure(f"{cmd.name} of container {self.name} failed: {type(e).__name__}: {e}")
        finally:
            cmd.done.set()

    # --- persistence + events ------------------------------------------------------------------

    async def _persist(self) -> None:
        await trio.to_thread.run_sync(self.files.write_status, self.status)
        changed, self._changed = self._changed, trio.Event()
        changed.set()

    async def _transition(self, new: ContainerState, action: str | None = None, **attributes: Any) -> None:
        if not can_transition(self.status.state, new):
            raise Conflict(f"container {self.name}: cannot go from {self.status.state} to {new}")
        self.status.state = new
        await self._persist()  # on disk before anyone hears of it
        if action:
            self.emit(action, **attributes)

    def emit(self, action: str, **attributes: Any) -> None:
        # docker puts labels flat among the attributes; ours win over a label of the same key
        merged = {**self.config.labels, "name": self.name, "image": self.config.image, **attributes}
        self.app.events.publish(Event("container", action, self.id, attributes=merged))

    # --- commands --------------------------------------------------------------------------------

    async def _do_start(self) -> dict[str, Any]:
        require_state(self.name, self.status.state, S.CREATED, S.EXITED, action="start")
        self._cancel_restart_timer()
        self.status.stopped_by_user = False
        await self._start_process()
        return {"id": self.id}

    async def _start_process(self) -> None:
        runtime = self.app.runtime(self.config.runtime)
        # A previous run may have left runtime state behind (e.g. after a crash).
        await self._runtime_cleanup()
        try:
            self.runtime_knows = True
            created = await self._create_in_runtime(runtime, CreateRequest(
                container_id=self.id,
                bundle=self.bundle_dir,
                state_dir=self.run_dir,
                log_path=self.files.log_path,
                log_size_max=self.app.config.log_size_max,
                sync_log=not self.config.auto_remove,
            ))
            self.status.pid = created.container_pid
            self.status.monitor_pid = created.monitor_pid
            await runtime.start(self.id)
        except BaseException as e:
            with trio.CancelScope(shield=True):
                await self._runtime_cleanup()
                await self._network_teardown()
                await self.sup.release_rootfs(self)
            if isinstance(e, EngineError):
                self.status.error = str(e)
                self.status.exit_code = _exit_code_for_start_error(str(e))
                await self._persist()
            raise
        self.status.started_at = time.time()
        self.status.finished_at = 0.0
        self.status.exit_code = 0
        self.status.oom_killed = False
        self.status.error = ""
        await self._transition(S.RUNNING, "start")
        self._watch()

    async def _create_in_runtime(self, runtime: Runtime, request: CreateRequest) -> Created:
        """Prepare the bundle and create the container in the runtime. A runtime that can
        (``create_when_ready``) starts its monitor first and has it load meanwhile."""
        create_when_ready = getattr(runtime, "create_when_ready", None)
        if create_when_ready is None:
            await self._prepare_bundle()
            return await runtime.create(request)
        return await create_when_ready(request, self._prepare_bundle)  # type: ignore[no-any-return]

    async def _prepare_bundle(self) -> None:
        rootfs = await self._prepare_rootfs_and_network()
        await self.sup.write_bundle(self, rootfs)
        self.status.log_offset_at_start = await self._log_size()

    async def _prepare_rootfs_and_network(self) -> Path:
        """The rootfs mount and the network set-up do not depend on each other: side by side."""
        rootfs: list[Path] = []

        async def mount() -> None:
            rootfs.append(await self.sup.prepare_rootfs(self))

        with unwrap_engine_errors():
            async with trio.open_nursery() as nursery:
                nursery.start_soon(mount)
                if network := self.app.services.get("network"):
                    nursery.start_soon(network.setup, self.config, self.status)
        return rootfs[0]

    async def _log_size(self) -> int:
        if not self.status.started_at:
            return 0  # never started: no output yet (the log is created by the monitor)
        return await trio.to_thread.run_sync(_file_size, self.files.log_path)

    def _watch(self) -> None:
        assert self._nursery is not None
        scope = trio.CancelScope()
        self._watch_scope = scope
        self._nursery.start_soon(self._watch_exit, scope)

    async def _watch_exit(self, scope: trio.CancelScope) -> None:
        with scope:
            runtime = self.app.runtime(self.config.runtime)
            try:
                info = await runtime.wait_exit(self.id, self.run_dir)
            except EngineError as e:
                log.error("container %s: waiting for exit failed: %s", self.name, e)
                info = ExitInfo(exit_code=255, finished_at=time.time())
            self.post("exited", info=info)

    async def _do_exited(self, info: ExitInfo) -> None:
        if self.status.state not in (S.RUNNING, S.PAUSED):
            return  # a stale notice (e.g. after an explicit stop handled it already)
        if self.config.auto_remove:
            # The exit and the removal in one write: REMOVING on disk has a daemon that
            # restarts meanwhile finish the removal.
            await self._record_exit(info, release=False, next_state=S.REMOVING)
            self._removed_automatically()
            return
        await self._record_exit(info)
        await self._after_exit()

    async def _record_exit(self, info: ExitInfo, *, release: bool = True,
                           next_state: ContainerState = S.EXITED) -> None:
        """Record the exit; ``release``: free what the run held now (not when an automatic
        removal, which frees it all, follows at once)."""
        self._watch_scope = None
        self.status.exit_code = info.exit_code
        self.status.oom_killed = info.oom_killed
        self.status.finished_at = info.finished_at or time.time()
        self.status.pid = 0
        self.status.monitor_pid = 0
        # An exited container has no address (docker's inspect); what the teardown needs
        # comes from the config and the network store, not from these.
        self.status.network_details = {}
        self.status.ip_address = ""
        # The exit is told first (an attached `run` returns now); the cleanup follows within
        # this same command, so no later command of this container can see it half done, and
        # after a crash adoption redoes it for an exited container.
        await self._transition(next_state, "die", exitCode=info.exit_code, oomKilled=info.oom_killed)
        if info.oom_killed:
            self.emit("oom")
        if release:
            with trio.CancelScope(shield=True):
                await self.release_run_resources()

    async def release_run_resources(self) -> None:
        """What a run holds once its process is gone: the runtime's state, the network and
        the rootfs mount. They are independent of each other (the container's mount
        namespace died with its last process), so they are released side by side."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._runtime_cleanup)
            nursery.start_soon(self._network_teardown)
            nursery.start_soon(self.sup.release_rootfs, self)

    async def _after_exit(self) -> None:
        if self.config.auto_remove:
            await self._remove_automatically()
            return
        policy = RestartPolicy.parse(self.config.restart_policy)
        verdict = decide(
            policy,
            exit_code=self.status.exit_code,
            stopped_by_user=self.status.stopped_by_user,
            restart_count=self.status.restart_count,
            run_seconds=self.status.finished_at - self.status.started_at,
            daemon_starting=False,
        )
        if isinstance(verdict, Restart):
            await self._schedule_restart(verdict)

    async def _schedule_restart(self, verdict: Restart) -> None:
        self.status.last_restart_reason = verdict.reason
        await self._transition(S.RESTARTING, "restarting", reason=verdict.reason, delay=round(verdict.delay, 3))
        assert self._nursery is not None
        scope = trio.CancelScope()
        self._restart_scope = scope

        async def timer() -> None:
            with scope:
                await trio.sleep(verdict.delay)
                self.post("policy_restart", reason=verdict.reason)

        self._nursery.start_soon(timer)

    async def _do_policy_restart(self, reason: str) -> None:
        if self.status.state != S.RESTARTING:
            return
        self._restart_scope = None
        self.status.restart_count += 1
        try:
            await self._start_process()
        except EngineError as e:
            log.error("container %s: restart failed: %s", self.name, e)
            self.status.error = str(e)
            await self._transition(S.EXITED, "die", exitCode=self.status.exit_code, error=str(e))
            return
        self.emit("restart", reason=reason, restartCount=self.status.restart_count)

    async def _remove_automatically(self) -> None:
        """``--rm``: the container is gone (name free, events told) as soon as its exit is
        recorded; the supervisor frees what the run held and deletes the files afterwards
        (after a crash it finishes that at start-up: the state on disk says REMOVING).
        Nobody waits on an automatic removal to report its errors, so they go to the log."""
        await self._transition(S.REMOVING)
        self._removed_automatically()

    def _removed_automatically(self) -> None:
        self._cancel_restart_timer()
        self._mark_removed()
        self.sup.finish_removal(self)

    def _mark_removed(self) -> None:
        self.removed = True
        changed, self._changed = self._changed, trio.Event()
        changed.set()
        self.emit("destroy")

    def attach(self) -> None:
        self.attached += 1

    def detach(self) -> None:
        self.attached -= 1
        if self.attached == 0:
            self._attached_done.set()
            self._attached_done = trio.Event()

    async def wait_attached_done(self) -> None:
        if self.attached:
            await self._attached_done.wait()

    def _cancel_restart_timer(self) -> None:
        if self._restart_scope is not None:
            self._restart_scope.cancel()
            self._restart_scope = None

    async def _do_stop(self, grace: float | None = None, signal: str | None = None) -> dict[str, Any]:
        if self.status.state == S.RESTARTING:
            self._cancel_restart_timer()
            self.status.stopped_by_user = True
            await self._transition(S.EXITED, "stop")
            return {"stopped": True}
        if self.status.state not in (S.RUNNING, S.PAUSED):
            return {"stopped": False}  # docker: stopping a stopped container is not an error
        self.status.stopped_by_user = True
        await self._persist()
        grace = self.config.stop_timeout if grace is None else grace
        sig = parse_signal(signal or self.config.stop_signal)
        info = await self._terminate(sig, grace)
        await self._record_exit(info, release=not self.config.auto_remove)
        self.emit("stop")
        await self._after_exit()
        return {"stopped": True, "exit_code": info.exit_code}

    async def _terminate(self, sig: int, grace: float) -> ExitInfo:
        runtime = self.app.runtime(self.config.runtime)
        if self._watch_scope is not None:
            self._watch_scope.cancel()  # we wait for the exit ourselves now
            self._watch_scope = None
        if self.status.state == S.PAUSED:
            await self._ignore_gone(runtime.resume(self.id))
        if grace > 0:
            await self._ignore_gone(runtime.kill(self.id, sig, all_processes=False))
            with trio.move_on_after(grace):
                return await runtime.wait_exit(self.id, self.run_dir)
        await self._ignore_gone(runtime.kill(self.id, signals.SIGKILL, all_processes=True))
        with trio.move_on_after(KILL_WAIT):
            return await runtime.wait_exit(self.id, self.run_dir)
        raise RuntimeFailure(f"container {self.name} did not exit {KILL_WAIT:.0f}s after SIGKILL")

    async def _ignore_gone(self, aw: Awaitable[Any]) -> None:
        try:
            await aw
        except (NotFound, Conflict):
            pass  # it exited on its own meanwhile; the exit file tells how

    async def _do_kill(self, signal: str | int = "SIGKILL") -> dict[str, Any]:
        sig = parse_signal(signal)
        require_state(self.name, self.status.state, S.RUNNING, S.PAUSED, action="kill")
        runtime = self.app.runtime(self.config.runtime)
        if sig == signals.SIGKILL:
            self.status.stopped_by_user = True
            await self._persist()
        await self._ignore_gone(runtime.kill(self.id, sig, all_processes=sig == signals.SIGKILL))
        self.emit("kill", signal=sig)
        return {"signal": sig}

    async def _do_restart(self, grace: float | None = None) -> dict[str, Any]:
        require_state(self.name, self.status.state, S.CREATED, S.RUNNING, S.PAUSED, S.EXITED, S.RESTARTING,
                      action="restart")
        if self.status.state in (S.RUNNING, S.PAUSED, S.RESTARTING):
            await self._do_stop(grace=grace)
        self.status.stopped_by_user = False
        await self._start_process()
        self.emit("restart", reason="requested by the user")
        return {"id": self.id}

    async def _do_pause(self) -> dict[str, Any]:
        require_state(self.name, self.status.state, S.RUNNING, action="pause")
        await self.app.runtime(self.config.runtime).pause(self.id)
        await self._transition(S.PAUSED, "pause")
        return {}

    async def _do_unpause(self) -> dict[str, Any]:
        require_state(self.name, self.status.state, S.PAUSED, action="unpause")
        await self.app.runtime(self.config.runtime).resume(self.id)
        await self._transition(S.RUNNING, "unpause")
        return {}

    async def _do_rename(self, new_name: str) -> dict[str, Any]:
        old = self.config.name
        self.config = attrs.evolve(self.config, name=new_name)
        await trio.to_thread.run_sync(self.files.write_config, self.config)
        self.emit("rename", oldName=old)
        return {"name": new_name}

    async def _do_remove(self, force: bool = False) -> dict[str, Any]:
        if self.status.state in ACTIVE and not force:
            require_state(self.name, self.status.state, S.CREATED, S.EXITED, S.DEAD, action="remove")
        if self.status.state in (S.RUNNING, S.PAUSED):
            self.status.stopped_by_user = True
            info = await self._terminate(signals.SIGKILL, 0)
            await self._record_exit(info)
        self._cancel_restart_timer()
        if self.status.state != S.REMOVING:
            await self._transition(S.REMOVING)
        try:
            with trio.CancelScope(shield=True):
                await self._runtime_cleanup()
                await self._network_teardown()
                await self.sup.destroy_files(self)
        except EngineError as e:
            self.status.error = f"removal failed: {e}"
            await self._transition(S.DEAD)
            raise
        self._mark_removed()
        return {"removed": self.id}

    async def _network_teardown(self) -> None:
        network = self.app.services.get("network")
        if network is None:
            return
        try:
            await network.teardown(self.config, self.status)
        except EngineError as e:
            log.warning("container %s: network teardown: %s", self.name, e)

    async def _runtime_cleanup(self) -> None:
        """Make the runtime forget the container. Skipped when we know it holds nothing
        (each runtime call is a process spawn on the start and exit paths)."""
        if self.runtime_knows is False:
            return
        runtime = self.app.plugins.register.runtimes.get(self.config.runtime)
        if runtime is None:
            return
        try:
            await runtime.delete(self.id, force=True)
        except NotFound:
            pass
        except EngineError as e:
            log.warning("container %s: runtime cleanup: %s", self.name, e)
            return
        self.runtime_knows = False

    # --- adoption after a daemon restart ---------------------------------------------------------

    async def _do_adopt(self) -> None:
        """Reconcile with what the runtime and the monitor say (podman's syncContainer)."""
        runtime = self.app.plugins.register.runtimes.get(self.config.runtime)
        state = self.status.state
        if runtime is None:
            return
        if state in (S.RUNNING, S.PAUSED):
            live = await runtime.state(self.id)
            if live is not None and live.status in ("running", "paused"):
                actual = S.PAUSED if live.status == "paused" else S.RUNNING
                if actual != state:
                    await self._transition(actual)
                self._watch()
                return
            info = runtime.read_exit(self.id, self.run_dir) or ExitInfo(
                exit_code=255, finished_at=time.time()
            )
            await self._record_exit(info, release=not self.config.auto_remove)
            await self._after_exit()
        elif state == S.EXITED and self.config.auto_remove:
            await self._remove_automatically()  # the daemon stopped between exit and removal
        elif state == S.RESTARTING:
            self.post("policy_restart", reason=self.status.last_restart_reason or "daemon restart")
        elif state in (S.CREATED, S.EXITED):
            await self._runtime_cleanup()
            await self.sup.release_rootfs(self)
            if state == S.EXITED:
                policy = RestartPolicy.parse(self.config.restart_policy)
                if policy.name == "always" and not self.status.stopped_by_user:
                    await self._schedule_restart(Restart(0.0, "daemon restart (policy always)"))


def _file_size(path: Any) -> int:
    try:
        return int(path.stat().st_size)
    except FileNotFoundError:
        return 0


def _exit_code_for_start_error(message: str) -> int:
    """docker's 126/127: the command could not be run / was not found."""
    lowered = message.lower()
    if "no such file or directory" in lowered or "not found" in lowered:
        return 127
    if "permission denied" in lowered or "exec format error" in lowered:
        return 126
    return 125

