"""`docker ps --filter` keys dockerd has beyond the engine's own list filters (network,
volume, before, since, publish, expose, is-task), and dockerd's words for a filter it does
not know or a status that does not exist. They work on the docker-shaped summaries (moby's
daemon/list.go semantics)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from engine.errors import InvalidArgument

ENGINE_KEYS = {"id", "name", "status", "label", "ancestor", "exited", "health"}
DOCKER_KEYS = {"network", "volume", "before", "since", "publish", "expose", "is-task"}
STATUSES = {"created", "restarting", "running", "removing", "paused", "exited", "dead"}

Summary = dict[str, Any]


def split_filters(filters: dict[str, list[str]]) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """(the engine's filters, the docker-only ones); an unknown key or status refused in
    dockerd's words."""
    for key in filters:
        if key not in ENGINE_KEYS | DOCKER_KEYS:
            raise InvalidArgument(f"Invalid filter '{key}'")
    for status in filters.get("status", []):
        if status not in STATUSES:
            raise InvalidArgument(f"Invalid filter 'status={status}'")
    for value in filters.get("is-task", []):
        if value not in ("true", "false"):
            raise InvalidArgument(f"Invalid filter 'is-task={value}'")
    return ({k: v for k, v in filters.items() if k in ENGINE_KEYS},
            {k: v for k, v in filters.items() if k in DOCKER_KEYS})


def docker_filter(filters: dict[str, list[str]], created_of: Callable[[str], float]) -> Callable[[Summary, float], bool]:
    """A predicate on (summary, created time) for the docker-only keys; ``created_of`` gives
    a before/since container's creation time (and raises NotFound for a missing one)."""
    before = min((created_of(v) for v in filters.get("before", [])), default=None)
    since = max((created_of(v) for v in filters.get("since", [])), default=None)
    task = "true" in filters.get("is-task", [])

    def match(doc: Summary, created: float) -> bool:
        if task:  # no swarm: no container is a task
            return False
        if before is not None and not created < before:
            return False
        if since is not None and not created > since:
            return False
        if "network" in filters and not any(_on_network(doc, v) for v in filters["network"]):
            return False
        if "volume" in filters and not any(_has_volume(doc, v) for v in filters["volume"]):
            return False
        if "publish" in filters and not any(_port(doc, v, "PublicPort") for v in filters["publish"]):
            return False
        return "expose" not in filters or any(_port(doc, v, "PrivatePort") for v in filters["expose"])

    return match


def _on_network(doc: Summary, value: str) -> bool:
    networks = (doc.get("NetworkSettings") or {}).get("Networks") or {}
    return value in networks or any(value and str((n or {}).get("NetworkID") or "").startswith(value)
                                    for n in networks.values())


def _has_volume(doc: Summary, value: str) -> bool:
    return any(value in (m.get("Destination"), m.get("Name") or m.get("Source")) for m in doc.get("Mounts") or [])


def _port(doc: Summary, value: str, field: str) -> bool:
    """``80``, ``80/tcp`` or a range ``8000-8080[/udp]`` against a port of the summary."""
    spec, _, proto = value.partition("/")
    low, _, high = spec.partition("-")
    try:
        first, last = int(low), int(high or low)
    except ValueError:
        raise InvalidArgument(f"Invalid filter '{value}'") from None
    return any(first <= int(p.get(field) or 0) <= last and (not proto or p.get("Type") == proto)
               for p in doc.get("Ports") or [])
