"""The container actor: the only code that changes one container.

Every change (start, stop, kill, pause, rename, network connect, exec, removal…) arrives in
the actor's mailbox as a typed command (``engine.actors.commands``) and runs one at a time,
so concurrent stop/kill/rm on one container cannot race. Internal news (the runtime saw the
container exit, a restart timer fired, an exec ended) arrives as notices, which are never
dropped and go first. Each transition is written to disk (atomically, from a snapshot taken
on the event loop) before it is reported and emitted as an event.

The actor knows nothing of the daemon: what it needs (runtimes, the root filesystem,
networking, bundles, events, the name registry) is injected as ``ActorDeps``.

Errors: an ``EngineError`` from a command is that command's answer and the actor goes on.
Anything else is a bug: the caller in flight gets an ``InternalError``, every queued caller
and waiter fails at once with ``Unavailable``, and the actor crashes, for its supervisor to
start a fresh one from the state on disk (OTP's "let it crash").
"""

from __future__ import annotations

import logging
import signal as signals
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import attrs
import trio

from engine.actors import commands as c
from engine.actors import verbs
from engine.actors.deps import ActorDeps
from engine.actors.events import Event
from engine.actors.health import HealthMonitor
from engine.actors.logs import LogPolicy
from engine.actors.mailbox import Envelope, Mailbox, MailboxClosed
from engine.actors.model import (
    ContainerConfig,
    ContainerFiles,
    ContainerStatus,
    encode_status,
    primary_ip,
    remove_dir,
)
from engine.actors.restart import Restart, RestartPolicy, decide
from engine.actors.state import ACTIVE, ContainerState, can_transition, require_state
from engine.errgroup import first_leaf, unwrap_engine_errors
from engine.errors import (
    CommandNotExecutable,
    CommandNotFound,
    Conflict,
    EngineError,
    InternalError,
    InvalidArgument,
    NotFound,
    RuntimeFailure,
    Timeout,
    Unavailable,
)
from engine.plugin import Created, CreateRequest, ExitInfo, Runtime

log = logging.getLogger("engine.container")

S = ContainerState
MAILBOX_SIZE = 64
MAX_EXEC_CODES = 1024  # exit codes of adopted exec sessions kept (see _watch_surviving_exec)
T = TypeVar("T")


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


def start_exit_code(error: EngineError) -> int:
    """docker's 126/127 for a command that could not be run / was not found, else 125."""
    if isinstance(error, CommandNotFound | CommandNotExecutable):
        return error.exit_code
    return 125


class ContainerActor:
    def __init__(self, deps: ActorDeps, config: ContainerConfig, status: ContainerStatus,
                 *, new: bool = False) -> None:
        self.deps = deps
        self.config = config
        self.status = status
        self._policy = RestartPolicy.parse(config.restart_policy)  # checked at create
        self.files = ContainerFiles(deps.container_dir(config.id),
                                    Path(config.log_path) if config.log_path else None)
        self.run_dir = deps.run_dir(config.id)
        self.bundle_dir = self.run_dir / "bundle"
        self._mailbox = Mailbox(MAILBOX_SIZE)
        self._changed = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._watch_scope: trio.CancelScope | None = None
        self._restart_scope: trio.CancelScope | None = None
        self._grace_scope: trio.CancelScope | None = None
        self._run = 0  # which run of the process an exit notice belongs to
        self._run_started: float | None = None  # trio's clock at this run's start
        self._preempted_run = -1
        self._execs: dict[int, Any] = {}
        self._next_exec = 1
        self._exec_ids: dict[int, str] = {}  # session -> the execID its events carry, if not its number
        # adopted exec sessions that have ended: runtime session id -> exit code (bounded)
        self.exec_codes: dict[str, int] = {}
        self.exec_pids: dict[str, int] = {}  # ... and -> their host pid (docker keeps it)
        self._attaches: dict[int, Any] = {}  # attach sessions: their connections
        self._next_attach = 1
        self._attached = 0
        self._attached_done = trio.Event()
        self._finished = False
        self.removed = False
        self.crashed: str | None = None  # why the actor crashed, once it has
        self._abandoned = False
        self._remove_volumes = False  # rm -v asked for the anonymous volumes to go too
        # Whether the runtime may hold state for this container: unknown (None) for a
        # container read from disk, False for a new one, True once created there.
        self.runtime_knows: bool | None = False if new else None
        self._health = HealthMonitor(self._health_exec, self.notify)
        self.rootfs_users = 0  # cp/export holding the root filesystem (OpenRootfs)
        self.copy_view: Any = None  # a stopped container's root with its mounts, for cp (verbs)

    # --- the public surface ---------------------------------------------------------------

    @property
    def id(self) -> str:
        return self.config.id

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def restart_policy(self) -> RestartPolicy:
        """Parsed once per value of the config's policy (``update`` may change it)."""
        if str(self._policy) != self.config.restart_policy:
            self._policy = RestartPolicy.parse(self.config.restart_policy)
        return self._policy

    async def call(self, command: c.Command) -> Any:
        """Queue a command and wait for its answer. A caller that goes away does not undo
        it: the command runs to its end, as docker's do."""
        if self.removed:
            raise NotFound(f"no such container: {self.name}")
        if self.crashed is not None:
            raise self._crash_error()
        self._preempt_stop(command)
        envelope = Envelope(command)
        self._mailbox.put(envelope, name=self.name)
        await envelope.done.wait()
        if envelope.error is not None:
            raise envelope.error
        return envelope.result

    def notify(self, notice: c.Notice) -> None:
        """Post internal news; never dropped while the actor lives."""
        self._mailbox.notify(notice)

    def changes(self) -> trio.Event:
        """An event set at the next change of status (persisted), at removal or crash."""
        return self._changed

    async def wait_for(self, predicate: Callable[[ContainerStatus], bool]) -> ContainerStatus:
        """Wait until ``predicate(status)`` holds or the container is removed. Fails at once
        with ``Unavailable`` if the actor crashes meanwhile."""
        while True:
            if self.crashed is not None:
                raise self._crash_error()
            if self.removed or predicate(self.status):
                return self.status
            await self._changed.wait()

    @property
    def released(self) -> bool:
        """Whether a removed container has let go of everything it held (or never will: its
        actor crashed and the daemon's next start finishes the removal)."""
        return self._finished or self.crashed is not None

    async def wait_released(self) -> None:
        """Until a removed container has let go of what it held (its network attachments,
        mounts, files): an automatic removal (``--rm``) frees them after the container is
        already gone by name and in events. Returns at once if the actor crashed."""
        while not self.released:
            await self._changed.wait()

    def attach(self) -> None:
        """An attached reader follows this run's output (removal waits for it)."""
        self._attached += 1

    def detach(self) -> None:
        self._attached -= 1
        if self._attached == 0:
            self._attached_done.set()
            self._attached_done = trio.Event()

    def emit(self, action: str, **attributes: Any) -> None:
        # docker puts labels flat among the attributes; ours win over a label of the same key
        merged = {**self.config.labels, "name": self.name, "image": self.config.image, **attributes}
        self.deps.publish(Event("container", action, self.id, attributes=merged))

    # --- the actor's life ----------------------------------------------------------------------

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Handle the mailbox until the container is removed. Raises (after failing every
        caller) when a command hits a bug; the supervisor decides what happens next."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started(self)
                while not self._finished:
                    try:
                        item = await self._mailbox.get()
                    except MailboxClosed:
                        break
                    if isinstance(item, Envelope):
                        await self._handle_command(item)
                    else:
                        await self._handle_notice(item)
                nursery.cancel_scope.cancel()
        except Exception as e:
            self._crash(e)
            raise
        finally:
            if self.removed:
                for envelope in self._mailbox.close(NotFound(f"no such container: {self.name} (it was removed)")):
                    envelope.fail(NotFound(f"no such container: {self.name} (it was removed)"))

    async def _handle_command(self, envelope: Envelope) -> None:
        command = envelope.command
        try:
            result = await self._dispatch(command)
        except EngineError as e:
            envelope.fail(e)
        except Exception as e:
            failure = InternalError(
                f"{_command_name(command)} of container {self.name} failed: {type(e).__name__}: {e}; "
                "the container's actor restarts from its state on disk"
            )
            failure.__cause__ = e  # the RPC answers a full disk (ENOSPC) as resource_exhausted
            envelope.fail(failure)
            raise
        except BaseException:
            envelope.fail(Unavailable(f"{_command_name(command)} of container {self.name} was "
                                      "interrupted: the daemon is shutting down"))
            raise
        else:
            envelope.reply(result)

    async def _dispatch(self, command: c.Command) -> Any:
        match command:
            case c.Start(attach):
                return await self._start(attach)
            case c.Stop(grace, signal):
                return await self._stop(grace, signal)
            case c.Kill(signal):
                return await self._kill(signal)
            case c.Restart(grace):
                return await self._restart(grace)
            case c.Pause():
                return await self._pause()
            case c.Unpause():
                return await self._unpause()
            case c.Rename(new_name):
                return await self._rename(new_name)
            case c.Remove(force, volumes):
                self._remove_volumes = volumes
                return await self._remove(force)
            case c.Connect(network, aliases, ipv4_address):
                return await self._connect(network, aliases, ipv4_address)
            case c.Disconnect(network, force):
                return await self._disconnect(network, force)
            case c.ExecStart():
                return await self._exec_start(command)
            case c.Attach():
                return await self._attach()
            case c.Resize(rows, cols):
                return await self._resize(rows, cols)
            case c.Update():
                return await verbs.update(self, command)
            case c.OpenRootfs(with_mounts):
                return await verbs.open_rootfs(self, with_mounts=with_mounts)
        raise InvalidArgument(f"unknown container command {command!r}")

    async def _handle_notice(self, notice: c.Notice) -> None:
        match notice:
            case c.Exited(info, run):
                await self._exited(info, run)
            case c.RestartDue(reason):
                await self._restart_due(reason)
            case c.ExecEnded(session, exit_code):
                self._exec_ended(session, exit_code)
            case c.Adopt():
                await self._adopt()
            case c.AttachEnded(session, detached):
                self._attach_ended(session, detached)
            case c.HealthResult(run, result):
                await verbs.health_result(self, run, result)
            case c.ReleaseRootfs():
                await verbs.release_rootfs(self)

    def _crash(self, error: BaseException) -> None:
        cause = first_leaf(error)
        self.crashed = f"{type(cause).__name__}: {cause}"
        log.error("actor of container %s crashed: %s", self.name, self.crashed, exc_info=error)
        crash = self._crash_error()
        for envelope in self._mailbox.close(crash):
            envelope.fail(crash)
        self._signal_change()

    def abandon(self, reason: str) -> None:
        """The supervisor gave up on this actor: every later command is refused."""
        self.crashed = reason
        self._abandoned = True

    def _crash_error(self) -> Unavailable:
        if self._abandoned:
            return Unavailable(f"container {self.name} is unavailable: {self.crashed}", reason=self.crashed)
        return Unavailable(
            f"container {self.name} is unavailable: its actor crashed ({self.crashed}); "
            "the daemon restarts it from its state on disk, retry in a moment",
            reason=self.crashed,
        )

    # --- persistence, events, bounded calls --------------------------------------------------

    async def _persist(self) -> None:
        data = encode_status(self.status)  # a snapshot, taken on the loop
        await trio.to_thread.run_sync(self.files.write_status_bytes, data)
        self._signal_change()

    def _signal_change(self) -> None:
        changed, self._changed = self._changed, trio.Event()
        changed.set()

    async def _transition(self, new: ContainerState, action: str | None = None, **attributes: Any) -> None:
        if not can_transition(self.status.state, new):
            raise Conflict(f"container {self.name}: cannot go from {self.status.state} to {new}")
        old, self.status.state = self.status.state, new
        try:
            await self._persist()  # on disk before anyone hears of it
        except EngineError:
            self.status.state = old  # nobody heard of it: it did not happen
            raise
        if action:
            self.emit(action, **attributes)

    async def _bounded(self, what: str, call: Awaitable[T], limit: float | None = None) -> T:
        """A runtime or helper call under the configured time limit."""
        limit = self.deps.settings.runtime_timeout if limit is None else limit
        with trio.move_on_after(limit):
            return await call
        raise Timeout(f"{what} of container {self.name} took longer than {limit:g}s; "
                      "the runtime may be stuck (see the daemon log)")

    async def _cleanup(self, what: str, step: Callable[[], Awaitable[None]]) -> None:
        """A cleanup step that must finish even when the caller goes away, but not hang:
        shielded and bounded; its failure is logged (the next start or rm retries)."""
        limit = self.deps.settings.cleanup_timeout
        with trio.CancelScope(shield=True):
            with trio.move_on_after(limit) as scope:
                try:
                    await step()
                except EngineError as e:
                    log.warning("container %s: %s: %s", self.name, what, e)
            if scope.cancelled_caught:
                log.warning("container %s: %s took longer than %gs; left for later", self.name, what, limit)

    def _runtime(self) -> Runtime:
        return self.deps.runtimes.usable(self.config.runtime)

    # --- start ---------------------------------------------------------------------------------

    async def _start(self, attach: bool = False) -> dict[str, Any]:
        require_state(self.name, self.status.state, S.CREATED, S.EXITED, action="start")
        if self.rootfs_users:  # a cp of the stopped container: docker's start waits for it
            await verbs.wait_for_copies(self, "start")
            require_state(self.name, self.status.state, S.CREATED, S.EXITED, action="start")
        self._cancel_restart_timer()
        self.status.stopped_by_user = False
        session = await self._start_process(attach=attach)
        return {"id": self.id, "attach": session} if attach else {"id": self.id}

    async def _start_process(self, *, attach: bool = False) -> c.AttachSession | None:
        runtime = self._runtime()
        # A previous run may have left runtime state behind (e.g. after a crash).
        await self._cleanup("runtime cleanup", self._runtime_cleanup)
        settings = self.deps.settings
        logging_ = LogPolicy.resolve(self.config, settings.log_driver, settings.log_opts)
        request = CreateRequest(
            container_id=self.id,
            bundle=self.bundle_dir,
            state_dir=self.run_dir,
            log_path=logging_.monitor_path(self.files.log_path),
            log_size_max=logging_.monitor_size_max,
            sync_log=not self.config.auto_remove,
            terminal=self.config.tty,
            stdin=self.config.open_stdin,
            stdin_once=self.config.stdin_once,
        )
        session: c.AttachSession | None = None
        try:
            self.runtime_knows = True
            created: Created = await self._bounded(
                "create", runtime.create_when_ready(request, self._prepare_bundle))
            self.status.pid = created.container_pid
            self.status.monitor_pid = created.monitor_pid
            if attach:  # before the process runs: not a byte of its output is missed
                session = await self._open_attach(runtime)
            await self._bounded("start", runtime.start(self.id))
        except BaseException as e:
            if session is not None:
                self._attaches.pop(session.session, None)
                with trio.CancelScope(shield=True):
                    await session.connection.aclose()
            await self._cleanup("runtime cleanup", self._runtime_cleanup)
            await self._cleanup("network teardown", self._network_teardown)
            await self._cleanup("unmount", self._unmount)
            await self._cleanup("volume unmount", self._volumes_unmount)
            if isinstance(e, EngineError):
                self.status.pid = 0
                self.status.monitor_pid = 0
                self.status.error = str(e)
                self.status.exit_code = start_exit_code(e)
                await self._persist()
            raise
        self._run += 1
        self._run_started = trio.current_time()
        self.status.started_at = time.time()
        self.status.finished_at = 0.0
        self.status.exit_code = 0
        self.status.oom_killed = False
        self.status.error = ""
        await self._transition(S.RUNNING, "start")
        self._watch()
        return session

    async def _prepare_bundle(self) -> None:
        rootfs = await self._prepare_rootfs_and_network()
        if self.deps.volumes is not None and self.config.volumes:
            self.status.volume_mounts = await self.deps.volumes.mount(self.config, rootfs)
        await self.deps.bundles.write_bundle(self.config, self.status, rootfs, self.bundle_dir, self._runtime())

    async def _prepare_rootfs_and_network(self) -> Path:
        """The rootfs mount and the network set-up do not depend on each other: side by side."""
        rootfs: list[Path] = []

        async def mount() -> None:
            rootfs.append(await self.deps.rootfs.mount(self.id, list(self.config.layers)))

        with unwrap_engine_errors():
            async with trio.open_nursery() as nursery:
                nursery.start_soon(mount)
                if self.deps.network is not None:
                    nursery.start_soon(self.deps.network.setup, self.config, self.status)
        return rootfs[0]

    def _watch(self) -> None:
        assert self._nursery is not None
        scope = trio.CancelScope()
        self._watch_scope = scope
        self._nursery.start_soon(self._watch_exit, scope, self._run)
        verbs.start_health(self, self._health, self._nursery)

    async def _watch_exit(self, scope: trio.CancelScope, run: int) -> None:
        with scope:
            try:
                info = await self.deps.runtimes.usable(self.config.runtime).wait_exit(self.id, self.run_dir)
            except EngineError as e:
                log.error("container %s: waiting for exit failed: %s", self.name, e)
                info = ExitInfo(exit_code=255, finished_at=time.time())
            self.notify(c.Exited(info, run))

    # --- exit and restart policy -----------------------------------------------------------------

    async def _exited(self, info: ExitInfo, run: int) -> None:
        if run != self._run or self.status.state not in (S.RUNNING, S.PAUSED):
            return  # a stale notice (an explicit stop handled this exit already)
        if self.config.auto_remove:
            # The exit and the removal in one write: REMOVING on disk has a daemon that
            # restarts meanwhile finish the removal.
            await self._record_exit(info, release=False, next_state=S.REMOVING)
            await self._remove_automatically()
            return
        await self._record_exit(info)
        await self._apply_restart_policy(daemon_starting=False)

    async def _record_exit(self, info: ExitInfo, *, release: bool = True,
                           next_state: ContainerState = S.EXITED) -> None:
        """Record the exit; ``release``: free what the run held now (not when a removal,
        which frees it all, follows at once)."""
        self._watch_scope = None
        self._health.stop()
        self.status.exit_code = info.exit_code
        self.status.oom_killed = info.oom_killed
        # never before the start: a clock step or an old exit file must not make it so
        self.status.finished_at = max(info.finished_at or time.time(), self.status.started_at)
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
        await self._kill_execs()
        if release:
            await self._release_run_resources()

    async def _release_run_resources(self) -> None:
        """What a run holds once its process is gone: the runtime's state, the network and
        the rootfs mount. They are independent of each other (the container's mount
        namespace died with its last process), so they are released side by side."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._cleanup, "runtime cleanup", self._runtime_cleanup)
            nursery.start_soon(self._cleanup, "network teardown", self._network_teardown)
            nursery.start_soon(self._cleanup, "unmount", self._unmount)
            nursery.start_soon(self._cleanup, "volume unmount", self._volumes_unmount)

    async def _apply_restart_policy(self, *, daemon_starting: bool) -> None:
        """The one place a stopped container may be brought back (``decide``)."""
        verdict = decide(
            self.restart_policy,
            exit_code=self.status.exit_code,
            stopped_by_user=self.status.stopped_by_user,
            restart_count=self.status.restart_count,
            run_seconds=self._run_seconds(),
            daemon_starting=daemon_starting,
        )
        if isinstance(verdict, Restart):
            await self._schedule_restart(verdict)

    def _run_seconds(self) -> float:
        """How long the last run lasted: on trio's monotonic clock when this actor started
        it (wall clocks step), else from the recorded times (a run adopted after a restart)."""
        if self._run_started is not None:
            return trio.current_time() - self._run_started
        return self.status.finished_at - self.status.started_at

    async def _schedule_restart(self, verdict: Restart) -> None:
        self.status.last_restart_reason = verdict.reason
        await self._transition(S.RESTARTING, "restarting", reason=verdict.reason, delay=round(verdict.delay, 3))
        assert self._nursery is not None
        scope = trio.CancelScope()
        self._restart_scope = scope

        async def timer() -> None:
            with scope:
                await trio.sleep(verdict.delay)
                self.notify(c.RestartDue(verdict.reason))

        self._nursery.start_soon(timer)

    async def _restart_due(self, reason: str) -> None:
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

    def _cancel_restart_timer(self) -> None:
        if self._restart_scope is not None:
            self._restart_scope.cancel()
            self._restart_scope = None

    # --- stop, kill, restart, pause --------------------------------------------------------------

    def _preempt_stop(self, command: c.Command) -> None:
        """``kill`` (SIGKILL) and ``rm -f`` cut a pending stop's grace period short, as
        docker's do: the stop goes on to SIGKILL at once."""
        preempts = (isinstance(command, c.Kill) and command.signal == signals.SIGKILL) or (
            isinstance(command, c.Remove) and command.force)
        if preempts and self._grace_scope is not None:
            self._grace_scope.cancel()
            self._preempted_run = self._run

    async def _stop(self, grace: float | None, signal: str | None) -> dict[str, Any]:
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
        info = await self._terminate(parse_signal(signal or self.config.stop_signal), grace)
        if self.config.auto_remove:
            await self._record_exit(info, release=False, next_state=S.REMOVING)
            self.emit("stop")
            await self._remove_automatically()
            return {"stopped": True, "exit_code": info.exit_code}
        await self._record_exit(info)
        self.emit("stop")
        await self._apply_restart_policy(daemon_starting=False)
        return {"stopped": True, "exit_code": info.exit_code}

    async def _terminate(self, sig: int, grace: float) -> ExitInfo:
        """Signal the container, wait up to ``grace`` seconds (inf: for ever), then SIGKILL."""
        runtime = self._runtime()
        if self._watch_scope is not None:
            self._watch_scope.cancel()  # we wait for the exit ourselves now
            self._watch_scope = None
        if self.status.state == S.PAUSED:
            await self._ignore_gone(self._bounded("resume", runtime.resume(self.id)))
        if grace > 0:
            await self._ignore_gone(self._bounded("kill", runtime.kill(self.id, sig, all_processes=False)))
            with trio.move_on_after(grace) as scope:
                self._grace_scope = scope
                try:
                    return await runtime.wait_exit(self.id, self.run_dir)
                finally:
                    self._grace_scope = None
        await self._ignore_gone(self._bounded("kill", runtime.kill(self.id, signals.SIGKILL, all_processes=True)))
        wait = self.deps.settings.kill_wait
        with trio.move_on_after(wait):
            return await runtime.wait_exit(self.id, self.run_dir)
        raise RuntimeFailure(f"container {self.name} did not exit {wait:g}s after SIGKILL")

    async def _ignore_gone(self, call: Awaitable[Any]) -> None:
        try:
            await call
        except (NotFound, Conflict):
            pass  # it exited on its own meanwhile; the exit file tells how

    async def _kill(self, sig: int) -> dict[str, Any]:
        if sig == signals.SIGKILL and self._preempted_run == self._run and self.status.state not in ACTIVE:
            return {"signal": sig}  # it cut a stop short, which killed the container already
        require_state(self.name, self.status.state, S.RUNNING, S.PAUSED, action="kill")
        if sig == signals.SIGKILL:
            self.status.stopped_by_user = True
            await self._persist()
        await self._ignore_gone(self._bounded(
            "kill", self._runtime().kill(self.id, sig, all_processes=sig == signals.SIGKILL)))
        self.emit("kill", signal=sig)
        return {"signal": sig}

    async def _restart(self, grace: float | None) -> dict[str, Any]:
        require_state(self.name, self.status.state, S.CREATED, S.RUNNING, S.PAUSED, S.EXITED, S.RESTARTING,
                      action="restart")
        if self.status.state in (S.RUNNING, S.PAUSED, S.RESTARTING):
            await self._stop(grace, None)
            if self.removed:
                return {"id": self.id}
        if self.rootfs_users:
            await verbs.wait_for_copies(self, "restart")
        self._cancel_restart_timer()
        self.status.stopped_by_user = False
        await self._start_process()
        self.emit("restart", reason="requested by the user")
        return {"id": self.id}

    async def _pause(self) -> dict[str, Any]:
        require_state(self.name, self.status.state, S.RUNNING, action="pause")
        await self._bounded("pause", self._runtime().pause(self.id))
        await self._transition(S.PAUSED, "pause")
        return {}

    async def _unpause(self) -> dict[str, Any]:
        require_state(self.name, self.status.state, S.PAUSED, action="unpause")
        await self._bounded("unpause", self._runtime().resume(self.id))
        await self._transition(S.RUNNING, "unpause")
        return {}

    # --- rename, networks -------------------------------------------------------------------------

    async def _rename(self, new_name: str) -> dict[str, Any]:
        old = self.config.name
        renamed = attrs.evolve(self.config, name=new_name)
        # on disk first: a full disk leaves the old name everywhere
        await trio.to_thread.run_sync(self.files.write_config, renamed)
        self.config = renamed
        self.emit("rename", oldName=old)
        return {"name": new_name}

    def _require_network(self) -> Any:
        if self.deps.network is None:
            raise Unavailable("networking is not available in this daemon")
        return self.deps.network

    async def _connect(self, network: str, aliases: list[str], ipv4_address: str = "") -> dict[str, Any]:
        running = self.status.state in (S.RUNNING, S.PAUSED)
        details = await self._require_network().connect(self.config, self.status, network, aliases,
                                                        running=running, ipv4_address=ipv4_address)
        if details is not None:
            await self._set_network_details(details)
        return {}

    async def _disconnect(self, network: str, force: bool) -> dict[str, Any]:
        running = self.status.state in (S.RUNNING, S.PAUSED)
        details = await self._require_network().disconnect(self.config, self.status, network,
                                                           force=force, running=running)
        if details is not None:
            await self._set_network_details(details)
        return {}

    async def _set_network_details(self, details: dict[str, Any]) -> None:
        self.status.network_details = details
        self.status.ip_address = primary_ip(details)
        await self._persist()

    # --- exec sessions -------------------------------------------------------------------------------

    async def _exec_start(self, command: c.ExecStart) -> c.ExecSession:
        if self.status.state != S.RUNNING:
            raise Conflict(f"container {self.name} is not running ({self.status.state.value})",
                           state=self.status.state.value)
        if not command.cmd:
            raise InvalidArgument("exec needs a command")
        runtime = self._runtime()
        rootfs = await self.deps.rootfs.mount(self.id, list(self.config.layers))  # mounted: its path
        process = await self.deps.bundles.exec_process(
            self.config, self.status, rootfs, list(command.cmd),
            env=list(command.env), workdir=command.workdir, user=command.user)
        handle = await self._bounded("exec", runtime.exec(self.id, process, work_dir=self.run_dir,
                                                          stdin=command.stdin, tty=command.tty))
        session = self._next_exec
        self._next_exec += 1
        self._execs[session] = handle
        if command.exec_id:
            self._exec_ids[session] = command.exec_id
        self.emit("exec_start", execID=command.exec_id or str(session), command=" ".join(command.cmd))
        return c.ExecSession(session, handle)

    def exec_session(self, session_id: str) -> Any | None:
        """The exec session (its handle) with this runtime session id, while it is ours."""
        for handle in self._execs.values():
            if getattr(handle, "session_id", None) == session_id:
                return handle
        return None

    def _exec_ended(self, session: int, exit_code: int) -> None:
        exec_id = self._exec_ids.pop(session, None) or str(session)
        if self._execs.pop(session, None) is not None:
            self.emit("exec_die", execID=exec_id, exitCode=exit_code)

    # --- attach sessions, terminal size (the plumbing is in engine.supervisor.attach) ----------------

    async def _attach(self) -> c.AttachSession:
        require_state(self.name, self.status.state, S.RUNNING, S.PAUSED, action="attach to")
        return await self._open_attach(self._runtime())

    async def _open_attach(self, runtime: Runtime) -> c.AttachSession:
        connection = await self._bounded("attach", runtime.attach(self.id, self.bundle_dir))
        session = self._next_attach
        self._next_attach += 1
        self._attaches[session] = connection
        self.emit("attach")
        return c.AttachSession(session, connection)

    def _attach_ended(self, session: int, detached: bool = True) -> None:
        if self._attaches.pop(session, None) is not None and detached:
            self.emit("detach")

    async def _resize(self, rows: int, cols: int) -> dict[str, Any]:
        require_state(self.name, self.status.state, S.RUNNING, S.PAUSED, action="resize the terminal of")
        if not self.config.tty:
            raise Conflict(f"container {self.name} has no terminal to resize (create it with -t)")
        await self._bounded("resize", self._runtime().resize(self.id, self.bundle_dir, rows, cols))
        return {}

    async def _kill_execs(self) -> None:
        """The container's processes are gone or going: so are its execs (their readers
        see the end of their streams and report it)."""
        for handle in list(self._execs.values()):
            with trio.CancelScope(shield=True), trio.move_on_after(self.deps.settings.kill_wait):
                await handle.kill(signals.SIGKILL)

    async def _health_exec(self, cmd: list[str]) -> c.ExecSession:
        return await self.call(c.ExecStart(cmd))  # type: ignore[no-any-return]

    # --- removal -------------------------------------------------------------------------------------

    async def _remove(self, force: bool) -> dict[str, Any]:
        if self.status.state in ACTIVE and not force:
            require_state(self.name, self.status.state, S.CREATED, S.EXITED, S.DEAD, action="remove")
        if self.status.state in (S.RUNNING, S.PAUSED):
            self.status.stopped_by_user = True
            info = await self._terminate(signals.SIGKILL, 0)
            await self._record_exit(info, release=False)
        self._cancel_restart_timer()
        await self._kill_execs()
        if self.status.state != S.REMOVING:
            await self._transition(S.REMOVING)
        try:
            with trio.CancelScope(shield=True):
                await self._destroy()
        except EngineError as e:
            self.status.error = f"removal failed: {e}"
            await self._transition(S.DEAD)
            raise
        self._mark_removed()
        self._finished = True
        return {"removed": self.id}

    async def _remove_automatically(self) -> None:
        """``--rm``: the container is gone (name free, events told) as soon as its exit is
        recorded; then what the run held is freed and the files deleted (after a crash the
        next daemon finishes that: the state on disk says REMOVING). Nobody waits on an
        automatic removal to report its errors, so they go to the log."""
        if self.status.state != S.REMOVING:
            await self._transition(S.REMOVING)
        self._cancel_restart_timer()
        self._mark_removed()
        # An attached `run --rm` reads its output to the end and replies first: the work
        # below (process spawns, unmount) would only compete with it for the CPU.
        if self._attached:
            with trio.move_on_after(self.deps.settings.attached_readers_wait):
                await self._attached_done.wait()
        try:
            with trio.CancelScope(shield=True):
                await self._destroy()
        except EngineError as e:
            log.error("removal of container %s is incomplete: %s; the daemon finishes it at "
                      "its next start", self.name, e)
        self._finished = True
        self._signal_change()

    async def _destroy(self) -> None:
        """Free everything the container holds; its files last."""
        await self._cleanup("the copy's mounts", lambda: verbs.close_copy_view(self))
        await self._release_run_resources()
        await self._bounded("removal of the writable layer", self.deps.rootfs.remove(self.id),
                            self.deps.settings.cleanup_timeout)
        if self.deps.volumes is not None and (self.config.auto_remove or self._remove_volumes):
            await self._cleanup("removal of anonymous volumes", self._volumes_remove)
        await trio.to_thread.run_sync(remove_dir, self.run_dir)
        await trio.to_thread.run_sync(remove_dir, self.files.dir)

    def _mark_removed(self) -> None:
        self.removed = True
        self.deps.registry.forget(self)
        self._signal_change()
        self.emit("destroy")

    # --- what a run leaves behind ---------------------------------------------------------------------

    async def _network_teardown(self) -> None:
        if self.deps.network is not None:
            await self.deps.network.teardown(self.config, self.status)

    async def _unmount(self) -> None:
        if self.rootfs_users:
            return  # a cp/export still reads it; the last one unmounts (verbs.release_rootfs)
        await self.deps.rootfs.unmount(self.id)

    async def _volumes_unmount(self) -> None:
        if self.deps.volumes is not None and self.config.volumes:
            await self.deps.volumes.unmount(self.config)

    async def _volumes_remove(self) -> None:
        if self.deps.volumes is not None and self.config.volumes:
            await self.deps.volumes.remove_anonymous(self.config)

    async def _runtime_cleanup(self) -> None:
        """Make the runtime forget the container. Skipped when we know it holds nothing
        (each runtime call is a process spawn on the start and exit paths)."""
        if self.runtime_knows is False:
            return
        runtime = self.deps.runtimes.installed(self.config.runtime)
        if runtime is None:
            return
        try:
            await runtime.delete(self.id, force=True)
        except NotFound:
            pass
        self.runtime_knows = False

    # --- adoption after a daemon (re)start --------------------------------------------------------------

    async def _adopt(self) -> None:
        """Reconcile with what the runtime and the monitor say (podman's syncContainer)."""
        state = self.status.state
        if state == S.REMOVING:
            await self._remove_automatically()  # removed already as far as anyone could see
            return
        runtime = self.deps.runtimes.installed(self.config.runtime)
        if runtime is None:
            log.warning("container %s: runtime %s is not installed; left as it is", self.name, self.config.runtime)
            return
        await self._adopt_execs(runtime)
        if state in (S.RUNNING, S.PAUSED):
            live = await self._bounded("state", runtime.state(self.id))
            if live is not None and live.status in ("running", "paused"):
                actual = S.PAUSED if live.status == "paused" else S.RUNNING
                if actual != state:
                    await self._transition(actual)
                self._run += 1
                self._run_started = None
                self._watch()
                return
            info = await trio.to_thread.run_sync(runtime.read_exit, self.id, self.run_dir)
            info = info or ExitInfo(exit_code=255, finished_at=time.time())
            if self.config.auto_remove:
                await self._record_exit(info, release=False, next_state=S.REMOVING)
                await self._remove_automatically()
                return
            await self._record_exit(info)
            await self._apply_restart_policy(daemon_starting=True)
        elif state == S.EXITED and self.config.auto_remove:
            await self._remove_automatically()  # the daemon stopped between exit and removal
        elif state == S.RESTARTING:
            self.notify(c.RestartDue(self.status.last_restart_reason or "daemon start"))
        elif state in (S.CREATED, S.EXITED):
            await self._cleanup("runtime cleanup", self._runtime_cleanup)
            await self._cleanup("unmount", self._unmount)
            await self._cleanup("volume unmount", self._volumes_unmount)
            if state == S.EXITED:
                await self._apply_restart_policy(daemon_starting=True)

    async def _adopt_execs(self, runtime: Runtime) -> None:
        """Exec sessions the last daemon left (each under its own conmon, in the run
        directory): watched until they end, when their exit code is recorded (``exec_die``)
        as for any exec; those that ended meanwhile are recorded now. They are this
        container's sessions again: a removal or the container's exit kills them."""
        survivors = await trio.to_thread.run_sync(runtime.surviving_execs, self.id, self.run_dir)
        for survivor in survivors:
            session = self._next_exec
            self._next_exec += 1
            self._execs[session] = survivor
            # named by its runtime session: the Docker API knows its exec id by that
            self._exec_ids[session] = str(survivor.session_id)
            log.info("container %s: exec session %s (%s) outlived the last daemon", self.name,
                     survivor.session_id, " ".join(survivor.args))
            assert self._nursery is not None
            self._nursery.start_soon(self._watch_surviving_exec, session, survivor)

    async def _watch_surviving_exec(self, session: int, survivor: Any) -> None:
        pid = survivor.pid or 0  # read while its session's files are there
        code = await survivor.wait()
        log.info("container %s: exec session %s ended with exit code %d", self.name, survivor.session_id, code)
        # kept for those who named the session before the restart (the Docker API's exec ids)
        self.exec_codes[survivor.session_id] = code
        self.exec_pids[survivor.session_id] = pid
        while len(self.exec_codes) > MAX_EXEC_CODES:
            self.exec_pids.pop(next(iter(self.exec_codes)), None)
            del self.exec_codes[next(iter(self.exec_codes))]
        self._signal_change()
        self.notify(c.ExecEnded(session, code))


def _command_name(command: Any) -> str:
    return type(command).__name__.lower()

