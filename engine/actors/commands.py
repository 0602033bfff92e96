"""The messages a container actor handles: commands (a caller waits for the reply) and
notices (internal news: an exit, a timer, an exec that ended; nobody waits).

Every change to a container is one of these, handled one at a time by its actor.
"""

from __future__ import annotations

from typing import Any

import attrs

from engine.plugin import ExitInfo

# --- commands: sent with ``ContainerActor.call`` ----------------------------------------------


@attrs.frozen
class Start:
    pass


@attrs.frozen
class Stop:
    grace: float | None = None  # None: the container's stop timeout; inf: wait forever
    signal: str | None = None


@attrs.frozen
class Kill:
    signal: int


@attrs.frozen
class Restart:
    grace: float | None = None


@attrs.frozen
class Pause:
    pass


@attrs.frozen
class Unpause:
    pass


@attrs.frozen
class Rename:
    new_name: str


@attrs.frozen
class Remove:
    force: bool = False
    volumes: bool = False  # rm -v: the container's anonymous volumes go too


@attrs.frozen
class Connect:
    network: str
    aliases: list[str] = attrs.field(factory=list)


@attrs.frozen
class Disconnect:
    network: str
    force: bool = False


@attrs.frozen
class ExecStart:
    cmd: list[str]
    env: list[str] = attrs.field(factory=list)
    workdir: str = ""
    user: str = ""


Command = Start | Stop | Kill | Restart | Pause | Unpause | Rename | Remove | Connect | Disconnect | ExecStart

# Commands that cut a pending stop's grace period short (docker: kill and rm -f preempt it).
PREEMPTS_STOP = (Kill, Remove)

# --- notices: posted with ``ContainerActor.notify`` -------------------------------------------


@attrs.frozen
class Adopt:
    """The daemon started: reconcile with what the runtime says."""


@attrs.frozen
class Exited:
    info: ExitInfo
    run: int  # which run of the container ended (a stale notice is ignored)


@attrs.frozen
class RestartDue:
    reason: str


@attrs.frozen
class ExecEnded:
    session: int
    exit_code: int


Notice = Adopt | Exited | RestartDue | ExecEnded


@attrs.frozen
class ExecSession:
    """An exec started by the actor: the caller reads its streams and reports its end."""

    session: int
    handle: Any  # the runtime's exec handle (engine.oci.exec.ExecHandle for CLI runtimes)
