"""Exec instances: docker creates one (``POST /containers/{id}/exec``), starts it later
(``POST /exec/{id}/start``) and reads its exit code afterwards (``GET /exec/{id}/json``).
The engine runs an exec in one call (``ContainerService.exec``); this keeps what docker
needs around it.

Each instance is also a file (``<root>/dockerapi/execs/<id>.json``, 0600: the environment
may hold secrets), written atomically when it is created, started and ended, so its id
outlives a daemon restart as the engine's exec session does (it runs on under its own
conmon; the container's actor adopts it). An instance that was running when the daemon
stopped is linked again to that session (``session_id``): inspect reads its state from the
container (``exec_session``, ``exec_codes``) until it ends, and the exit code is then
written down. Records go with their container (its ``destroy`` event) and, beyond
``MAX_EXECS``, the oldest finished ones first.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import trio

from engine.errors import Conflict, NotFound
from engine.oci.exec import sessions_dir
from engine.store.atomic import write_json_atomic
from engine.supervisor.container_service import ExecSpec

log = logging.getLogger("engine.dockerapi")

MAX_EXECS = 1024  # finished instances beyond this are forgotten, oldest first
FOLLOW_RECHECK = 5.0  # seconds between looks at an adopted session, besides the container's news
RECORD_VERSION = 1


@attrs.define
class ExecInstance:
    id: str
    container_id: str
    spec: ExecSpec
    created: float = attrs.field(factory=time.time)
    started: bool = False
    running: bool = False
    exit_code: int | None = None
    pid: int = 0  # the exec'd process's host pid once it ran (docker keeps it after the end)
    session_id: str | None = None  # the engine's exec session (under its own conmon)
    console_size: tuple[int, int] | None = None  # rows, cols: the terminal's, until it runs
    input: Any = None  # its connection's input (engine.dockerapi.attach.ConnectionInput) while it runs
    handle: Any = None  # the session's handle while this daemon pumps it (its pid)
    adopted: bool = False  # running when the last daemon stopped: the container knows its state

    def inspect(self) -> dict[str, object]:
        cmd = self.spec.cmd
        pid = self.pid
        if self.running and not pid and self.handle is not None:
            pid = self.handle.pid or 0
            self.pid = pid
        return {
            "ID": self.id,
            "ContainerID": self.container_id,
            "Running": self.running,
            "ExitCode": self.exit_code,
            "ProcessConfig": {
                "tty": self.spec.tty,
                "entrypoint": cmd[0] if cmd else "",
                "arguments": cmd[1:],
                "privileged": False,
                "user": self.spec.user,
            },
            "OpenStdin": self.spec.stdin,
            "OpenStderr": True,
            "OpenStdout": True,
            "CanRemove": not self.running,
            "DetachKeys": "",
            "Pid": pid,
        }

    def record(self) -> dict[str, Any]:
        """What is kept on disk (not the live connection or handle)."""
        return {
            "version": RECORD_VERSION, "id": self.id, "container_id": self.container_id,
            "spec": attrs.asdict(self.spec), "created": self.created, "started": self.started,
            "running": self.running, "exit_code": self.exit_code, "pid": self.pid,
            "session_id": self.session_id,
            "console_size": list(self.console_size) if self.console_size else None,
        }  # fmt: skip

    @classmethod
    def from_record(cls, doc: dict[str, Any]) -> ExecInstance:
        size = doc.get("console_size")
        return cls(
            id=str(doc["id"]), container_id=str(doc["container_id"]), spec=ExecSpec(**doc["spec"]),
            created=float(doc["created"]), started=bool(doc["started"]), running=bool(doc["running"]),
            exit_code=None if doc.get("exit_code") is None else int(doc["exit_code"]),
            pid=int(doc.get("pid") or 0), session_id=doc.get("session_id"),
            console_size=(int(size[0]), int(size[1])) if size else None,
        )  # fmt: skip


# --- the files -------------------------------------------------------------------------------------


def _record_path(directory: Path, exec_id: str) -> Path:
    return directory / f"{exec_id}.json"


def _write(directory: Path, record: dict[str, Any]) -> None:
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_json_atomic(_record_path(directory, record["id"]), record, mode=0o600)


def _remove(directory: Path, exec_ids: list[str]) -> None:
    for exec_id in exec_ids:
        _record_path(directory, exec_id).unlink(missing_ok=True)


def _load(directory: Path) -> list[ExecInstance]:
    found = []
    for path in sorted(directory.glob("*.json")) if directory.is_dir() else []:
        try:
            found.append(ExecInstance.from_record(json.loads(path.read_text())))
        except (OSError, ValueError, KeyError, TypeError, IndexError) as e:
            log.warning("exec record %s is unreadable (%s); removed", path.name, e)
            path.unlink(missing_ok=True)
    found.sort(key=lambda e: e.created)
    return found


def _session_on_disk(run_dir: Path, session_id: str) -> tuple[bool, int]:
    """Whether an exec session's directory is still there (not yet adopted), and its pid."""
    directory = sessions_dir(run_dir) / session_id
    try:
        return True, int((directory / "pid").read_text().strip() or 0)
    except (FileNotFoundError, ValueError):
        return directory.is_dir(), 0


# --- the registry ----------------------------------------------------------------------------------

FindActor = Callable[[str], Any]  # a container's actor by its full id, or None


class ExecRegistry:
    """The instances, in memory and (with ``directory``) on disk. ``find_actor`` gives the
    container of an adopted instance, whose state it reports."""

    def __init__(self, directory: Path | None = None, find_actor: FindActor | None = None) -> None:
        self._execs: OrderedDict[str, ExecInstance] = OrderedDict()
        self.directory = directory
        self._find_actor = find_actor or (lambda _cid: None)
        self._nursery: trio.Nursery | None = None

    # --- life -----------------------------------------------------------------------------------

    async def load(self, nursery: trio.Nursery) -> None:
        """Read the records a previous daemon left; drop those of containers that are gone;
        follow those that were running (their sessions outlived the daemon)."""
        self._nursery = nursery
        if self.directory is None:
            return
        gone = []
        for instance in await trio.to_thread.run_sync(_load, self.directory):
            if self._find_actor(instance.container_id) is None:
                gone.append(instance.id)
                continue
            self._execs[instance.id] = instance
            if instance.running:
                instance.adopted = True
                nursery.start_soon(self._follow, instance)
        if gone:
            await trio.to_thread.run_sync(_remove, self.directory, gone)

    async def save(self, instance: ExecInstance) -> None:
        if self.directory is None or instance.id not in self._execs:
            await trio.lowlevel.checkpoint()
            return
        try:
            await trio.to_thread.run_sync(_write, self.directory, instance.record())
        except OSError as e:  # the exec goes on; only its record after a restart is at stake
            log.error("cannot record exec %s: %s", instance.id[:12], e)

    def container_removed(self, container_id: str) -> None:
        """The container is gone: so are its instances (docker answers 404 for them)."""
        ids = [e.id for e in self._execs.values() if e.container_id == container_id]
        for exec_id in ids:
            del self._execs[exec_id]
        self._remove_files(ids)

    def _remove_files(self, ids: list[str]) -> None:
        if self.directory is None or not ids:
            return
        trio.lowlevel.start_thread_soon(partial(_remove, self.directory, ids), _log_failure)

    # --- instances ------------------------------------------------------------------------------

    async def create(self, container_id: str, spec: ExecSpec,
                     console_size: tuple[int, int] | None = None) -> ExecInstance:
        instance = ExecInstance(secrets.token_hex(32), container_id, spec, console_size=console_size)
        self._execs[instance.id] = instance
        self._forget_old()
        await self.save(instance)
        return instance

    def get(self, exec_id: str) -> ExecInstance:
        instance = self._execs.get(exec_id)
        if instance is None:
            matches = [e for e in self._execs.values() if e.id.startswith(exec_id)] if len(exec_id) >= 12 else []
            if len(matches) != 1:
                raise NotFound(f"no such exec instance: {exec_id}")
            instance = matches[0]
        if instance.adopted:
            self._refresh(instance)
        return instance

    def claim(self, exec_id: str) -> ExecInstance:
        """The instance, marked started: an exec runs once (409 for a second start). It is
        written down once its session runs (``session_started``)."""
        instance = self.get(exec_id)
        if instance.started:
            raise Conflict(f"exec instance {exec_id} has already been started")
        instance.started = True
        instance.running = True
        return instance

    async def session_started(self, instance: ExecInstance, handle: Any) -> None:
        """The engine's session runs it: which one, for a daemon that comes after."""
        instance.handle = handle
        instance.session_id = str(handle.session_id)
        await self.save(instance)

    async def ended(self, instance: ExecInstance, exit_code: int) -> None:
        if instance.handle is not None:
            instance.pid = instance.pid or instance.handle.pid or 0
        instance.exit_code = exit_code
        instance.running = False
        instance.input = None
        instance.handle = None
        await self.save(instance)

    def docker_exec_id(self, exec_id: str) -> str:
        """An exec event's ``execID`` as Docker clients know it: ours already, or the
        runtime session of an exec adopted after a daemon restart (the container names
        such sessions so), mapped to its instance; anything else (engctl's) unchanged."""
        if exec_id in self._execs:
            return exec_id
        for instance in self._execs.values():
            if instance.session_id == exec_id:
                return instance.id
        return exec_id

    def for_container(self, container_id: str) -> list[str]:
        ids = []
        for e in list(self._execs.values()):
            if e.container_id == container_id and e.adopted:
                self._refresh(e)
            if e.container_id == container_id and e.running:
                ids.append(e.id)
        return ids

    # --- instances whose session outlived a daemon ----------------------------------------------------

    def _refresh(self, instance: ExecInstance) -> None:
        """An adopted instance's state, from its container: running while the container
        holds (or has yet to adopt) its session, ended once the container recorded the
        code. No container, no session: it ended unseen (no exit code)."""
        actor = self._find_actor(instance.container_id)
        session_id = instance.session_id
        if actor is not None and session_id:
            code = actor.exec_codes.get(session_id)
            if code is not None:
                # its pid, should the end have been recorded before anyone asked for it
                instance.pid = instance.pid or actor.exec_pids.get(session_id, 0)
                self._settle(instance, code)
                return
            handle = actor.exec_session(session_id)
            if handle is not None:
                instance.pid = instance.pid or handle.pid or 0
                return
            on_disk, pid = _session_on_disk(actor.run_dir, session_id)
            if on_disk:
                instance.pid = instance.pid or pid
                return
        self._settle(instance, None)

    def _settle(self, instance: ExecInstance, code: int | None) -> None:
        instance.adopted = False
        instance.running = False
        instance.exit_code = code
        if self._nursery is not None:
            self._nursery.start_soon(self.save, instance)

    async def _follow(self, instance: ExecInstance) -> None:
        """Until an adopted instance ends: its end is written down even if nobody asks."""
        while instance.adopted:
            self._refresh(instance)
            actor = self._find_actor(instance.container_id)
            if not instance.adopted or actor is None:
                return
            with trio.move_on_after(FOLLOW_RECHECK):
                await actor.changes().wait()

    def _forget_old(self) -> None:
        forgotten = []
        while len(self._execs) > MAX_EXECS:
            for key, instance in self._execs.items():
                if not instance.running:
                    del self._execs[key]
                    forgotten.append(key)
                    break
            else:
                break
        self._remove_files(forgotten)


def _log_failure(outcome: Any) -> None:
    try:
        outcome.unwrap()
    except OSError as e:
        log.error("cannot remove exec records: %s", e)


def exec_records_dir(root: Path) -> Path:
    return root / "dockerapi" / "execs"


__all__ = ["MAX_EXECS", "ExecInstance", "ExecRegistry", "exec_records_dir"]
