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
    # connect to the container's stdio after it is created, before its process runs (no
    # output is missed); the reply's "attach" holds the AttachSession
    attach: bool = False


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
    ipv4_address: str = ""  # --ip: the container's address there ("" for any)


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
    stdin: bool = False  # the handle's stdin feeds the process
    tty: bool = False  # the process gets a pseudo-terminal
    exec_id: str = ""  # the caller's name for it (the Docker API's exec id) in its events


@attrs.frozen
class Attach:
    """Connect to the running container's stdio (output from now on, its stdin)."""


@attrs.frozen
class Resize:
    """The window size of the container's terminal."""

    rows: int
    cols: int


@attrs.frozen
class Update:
    """docker update: new limits (None: unchanged) and restart policy."""

    memory: int | None = None
    cpus: float | None = None
    pids_limit: int | None = None
    restart_policy: str | None = None
    cpu_shares: int | None = None
    cpuset_cpus: str | None = None  # "0-1,3"
    cpuset_mems: str | None = None
    memory_swap: int | None = None  # memory + swap (docker's MemorySwap); -1 unlimited


@attrs.frozen
class OpenRootfs:
    """An fd of the container's root filesystem (running or not) for cp/export, mounted
    if it was not: the caller closes the fd and then posts ``ReleaseRootfs``. With
    ``with_mounts``, a running container's root as it sees it (its volumes and binds in
    place: cp); without, the root filesystem alone (export)."""

    with_mounts: bool = False


Command = (Start | Stop | Kill | Restart | Pause | Unpause | Rename | Remove | Connect | Disconnect
           | ExecStart | Attach | Resize | Update | OpenRootfs)

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


@attrs.frozen
class AttachEnded:
    session: int
    # the client left (detach keys, or it went away): docker's "detach" event; not when the
    # session ended with the container's output (docker emits none then)
    detached: bool = True


@attrs.frozen
class HealthResult:
    """A health probe finished (engine.actors.health); ``run``: the run it probed."""

    run: int
    result: Any  # engine.actors.health.ProbeResult


@attrs.frozen
class ReleaseRootfs:
    """A user of ``OpenRootfs`` is done: the last one unmounts a stopped container."""


Notice = Adopt | Exited | RestartDue | ExecEnded | AttachEnded | HealthResult | ReleaseRootfs


@attrs.frozen
class ExecSession:
    """An exec started by the actor: the caller reads its streams and reports its end."""

    session: int
    handle: Any  # the runtime's exec handle (engine.oci.exec.ExecHandle for CLI runtimes)


@attrs.frozen
class AttachSession:
    """A connection to the container's stdio opened by the actor: the caller pumps it and
    reports its end (``AttachEnded``)."""

    session: int
    connection: Any  # the runtime's attach connection (engine.oci.attach.ConmonAttach)
