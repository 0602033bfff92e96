"""``docker import --change``: Dockerfile instructions applied to an image's run defaults."""

from __future__ import annotations

import json
import shlex
from typing import Any

from engine.errors import InvalidArgument

SUPPORTED = (
    "CMD",
    "ENTRYPOINT",
    "ENV",
    "EXPOSE",
    "LABEL",
    "USER",
    "VOLUME",
    "WORKDIR",
    "STOPSIGNAL",
)


def _command(value: str) -> list[str]:
    """Exec form (a JSON array) or shell form (run by ``/bin/sh -c``), as in a Dockerfile."""
    if value.startswith("["):
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = None
        if isinstance(parsed, list) and all(isinstance(p, str) for p in parsed):
            return parsed
    return ["/bin/sh", "-c", value]


def _pairs(value: str, what: str) -> dict[str, str]:
    """``k=v k2="v 2"``, or the legacy single ``k v`` form."""
    words = shlex.split(value)
    if words and "=" not in words[0]:
        key, _, rest = value.partition(" ")
        return {key: rest.strip()}
    out = {}
    for word in words:
        key, eq, val = word.partition("=")
        if not eq or not key:
            raise InvalidArgument(f"{what} {value!r}: expected key=value pairs")
        out[key] = val
    return out


def apply_changes(config: dict[str, Any], changes: list[str]) -> dict[str, Any]:
    """Apply instructions to a JSON ``config`` object (User, Env, Cmd...); returns a copy."""
    out = dict(config)
    for change in changes:
        instruction, _, value = change.strip().partition(" ")
        op, value = instruction.upper(), value.strip()
        if op not in SUPPORTED:
            raise InvalidArgument(
                f"change {change!r}: {instruction!r} is not supported; use one of "
                + ", ".join(SUPPORTED)
            )
        if not value:
            raise InvalidArgument(f"change {change!r}: {op} needs a value")
        _apply_one(out, op, value)
    return out


def _apply_one(out: dict[str, Any], op: str, value: str) -> None:
    if op in ("CMD", "ENTRYPOINT"):
        out["Cmd" if op == "CMD" else "Entrypoint"] = _command(value)
    elif op == "ENV":
        env = [e for e in out.get("Env") or []]
        for key, val in _pairs(value, "ENV").items():
            env = [e for e in env if e.partition("=")[0] != key] + [f"{key}={val}"]
        out["Env"] = env
    elif op == "LABEL":
        out["Labels"] = {**(out.get("Labels") or {}), **_pairs(value, "LABEL")}
    elif op == "EXPOSE":
        ports = dict(out.get("ExposedPorts") or {})
        for port in value.split():
            ports[port if "/" in port else f"{port}/tcp"] = {}
        out["ExposedPorts"] = ports
    elif op == "VOLUME":
        volumes = dict(out.get("Volumes") or {})
        paths = _command(value) if value.startswith("[") else value.split()
        if paths[:2] == ["/bin/sh", "-c"]:
            raise InvalidArgument(f"VOLUME {value!r}: expected a JSON array or paths")
        volumes.update({p: {} for p in paths})
        out["Volumes"] = volumes
    else:
        key = {"USER": "User", "WORKDIR": "WorkingDir", "STOPSIGNAL": "StopSignal"}[op]
        out[key] = value
