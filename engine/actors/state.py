"""The container state machine: one enum, one table of allowed transitions.

Pure (no trio, no I/O), so a test can walk every pair.
"""

from __future__ import annotations

import enum

from engine.errors import Conflict


class ContainerState(enum.StrEnum):
    CREATING = "creating"  # config written, root fs / bundle not ready yet (crash → removed)
    CREATED = "created"
    RUNNING = "running"
    PAUSED = "paused"
    RESTARTING = "restarting"  # exited; waiting out the restart policy's backoff
    EXITED = "exited"
    REMOVING = "removing"
    DEAD = "dead"  # removal failed half-way; only `rm -f` helps


S = ContainerState

TRANSITIONS: dict[ContainerState, frozenset[ContainerState]] = {
    S.CREATING: frozenset({S.CREATED, S.REMOVING}),
    S.CREATED: frozenset({S.RUNNING, S.EXITED, S.REMOVING}),
    S.RUNNING: frozenset({S.PAUSED, S.EXITED, S.RESTARTING, S.REMOVING}),
    S.PAUSED: frozenset({S.RUNNING, S.EXITED, S.REMOVING}),
    S.RESTARTING: frozenset({S.RUNNING, S.EXITED, S.REMOVING}),
    S.EXITED: frozenset({S.RUNNING, S.RESTARTING, S.REMOVING}),
    S.REMOVING: frozenset({S.DEAD}),
    S.DEAD: frozenset({S.REMOVING}),
}

# Where an "alive" process exists, for ps without -a and for `rm` without -f.
ACTIVE = frozenset({S.RUNNING, S.PAUSED, S.RESTARTING})


def can_transition(current: ContainerState, new: ContainerState) -> bool:
    return new == current or new in TRANSITIONS[current]


def require_state(name: str, current: ContainerState, *allowed: ContainerState, action: str) -> None:
    """Raise ``Conflict`` naming the container, its state and what would be allowed."""
    if current in allowed:
        return
    hint = {
        S.RUNNING: "stop it first, or use --force",
        S.PAUSED: "unpause it first",
        S.CREATED: "start it first",
        S.EXITED: "start it first",
        S.REMOVING: "it is being removed",
        S.RESTARTING: "it is waiting to restart; stop it first",
    }.get(current, "")
    allowed_text = ", ".join(sorted(s.value for s in allowed))
    raise Conflict(
        f"cannot {action} container {name}: it is {current.value} (must be {allowed_text})"
        + (f"; {hint}" if hint else ""),
        state=current.value,
    )


def docker_status(state: ContainerState) -> str:
    """docker's ``State.Status`` words."""
    return {S.CREATING: "created", S.DEAD: "dead"}.get(state, state.value)
