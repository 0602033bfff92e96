"""Docker-shaped views and small helpers for container.* handlers beyond the core: health
in inspect and ps, ``wait --condition``."""

from __future__ import annotations

from typing import Any

import attrs

from engine.actors.container import ContainerActor
from engine.actors.health import NONE, STARTING
from engine.actors.model import iso_time
from engine.actors.state import ContainerState
from engine.errors import InvalidArgument
from engine.supervisor.container_service import ContainerService

WAIT_CONDITIONS = ("not-running", "next-exit", "removed")


@attrs.frozen
class WaitParams:
    id: str
    condition: str = "not-running"


def health_word(actor: ContainerActor) -> str:
    """docker's health filter values: starting, healthy, unhealthy, none."""
    if actor.config.healthcheck is None:
        return NONE
    health = actor.status.health
    return health.status if health is not None else STARTING


def health_suffix(actor: ContainerActor) -> str:
    """What ``ps`` adds to a running container's status."""
    word = health_word(actor)
    if word == NONE:
        return ""
    return " (health: starting)" if word == STARTING else f" ({word})"


def health_view(actor: ContainerActor) -> dict[str, Any]:
    """``State.Health`` of inspect, present only for a container with a check."""
    if actor.config.healthcheck is None:
        return {}
    health = actor.status.health
    return {"Health": {
        "Status": health_word(actor),
        "FailingStreak": health.failing_streak if health else 0,
        "Log": [{"Start": iso_time(r.start), "End": iso_time(r.end), "ExitCode": r.exit_code,
                 "Output": r.output} for r in (health.log if health else [])],
    }}


async def wait_condition(service: ContainerService, ref: str, condition: str) -> dict[str, Any]:
    if condition not in WAIT_CONDITIONS:
        raise InvalidArgument(f"invalid wait condition {condition!r}: use {', '.join(WAIT_CONDITIONS)}")
    if condition == "not-running":
        return await service.wait(ref)
    actor = service.get(ref)
    if condition == "removed":
        status = await actor.wait_for(lambda _s: False)
    else:
        finished = actor.status.finished_at
        status = await actor.wait_for(
            lambda s: s.finished_at != finished and s.state != ContainerState.RUNNING)
    return {"StatusCode": status.exit_code, "OOMKilled": status.oom_killed}
