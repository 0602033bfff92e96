"""Exec instances: docker creates one (``POST /containers/{id}/exec``), starts it later
(``POST /exec/{id}/start``) and reads its exit code afterwards (``GET /exec/{id}/json``).
The engine runs an exec in one call (``ContainerService.exec``); this keeps what docker
needs around it, in memory (an exec does not outlive the daemon in docker either)."""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from typing import Any

import attrs

from engine.errors import Conflict, NotFound
from engine.supervisor.container_service import ExecSpec

MAX_EXECS = 1024  # finished instances beyond this are forgotten, oldest first


@attrs.define
class ExecInstance:
    id: str
    container_id: str
    spec: ExecSpec
    created: float = attrs.field(factory=time.time)
    started: bool = False
    running: bool = False
    exit_code: int | None = None
    console_size: tuple[int, int] | None = None  # rows, cols: the terminal's, until it runs
    input: Any = None  # its connection's input (engine.dockerapi.attach.ConnectionInput) while it runs

    def inspect(self) -> dict[str, object]:
        cmd = self.spec.cmd
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
            "Pid": 0,
        }


class ExecRegistry:
    def __init__(self) -> None:
        self._execs: OrderedDict[str, ExecInstance] = OrderedDict()

    def create(self, container_id: str, spec: ExecSpec) -> ExecInstance:
        instance = ExecInstance(secrets.token_hex(32), container_id, spec)
        self._execs[instance.id] = instance
        self._forget_old()
        return instance

    def get(self, exec_id: str) -> ExecInstance:
        instance = self._execs.get(exec_id)
        if instance is None:
            matches = [e for e in self._execs.values() if e.id.startswith(exec_id)] if len(exec_id) >= 12 else []
            if len(matches) != 1:
                raise NotFound(f"no such exec instance: {exec_id}")
            instance = matches[0]
        return instance

    def claim(self, exec_id: str) -> ExecInstance:
        """The instance, marked started: an exec runs once (409 for a second start)."""
        instance = self.get(exec_id)
        if instance.started:
            raise Conflict(f"exec instance {exec_id} has already been started")
        instance.started = True
        instance.running = True
        return instance

    def for_container(self, container_id: str) -> list[str]:
        return [e.id for e in self._execs.values() if e.container_id == container_id and e.running]

    def _forget_old(self) -> None:
        while len(self._execs) > MAX_EXECS:
            for key, instance in self._execs.items():
                if not instance.running:
                    del self._execs[key]
                    break
            else:
                return
