"""``docker import --change``: Dockerfile instructions applied to an image's run defaults."""

from __future__ import annotations

import json
import re
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
    "HEALTHCHECK",
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


_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_DURATION_NS = {"ns": 1, "us": 1_000, "µs": 1_000, "ms": 1_000_000, "s": 1_000_000_000,
                "m": 60_000_000_000, "h": 3_600_000_000_000}
_HEALTH_DURATIONS = {"interval": "Interval", "timeout": "Timeout", "start-period": "StartPeriod"}


def _go_duration(text: str) -> int:
    """Go's time.ParseDuration, in nanoseconds (dockerd's errors)."""
    body = text.lstrip("+-")
    if body == "0":
        return 0
    pos, total = 0, 0.0
    for match in _DURATION.finditer(body):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _DURATION_NS[match.group(2)]
        pos = match.end()
    if not body or pos != len(body):
        if pos == 0 and re.fullmatch(r"\d+(\.\d*)?", body):
            raise InvalidArgument(f"time: missing unit in duration {json.dumps(text)}")
        raise InvalidArgument(f"time: invalid duration {json.dumps(text)}")
    return int(-total if text.startswith("-") else total)


def _healthcheck(value: str) -> dict[str, Any]:
    """``HEALTHCHECK [--interval=… --timeout=… --start-period=… --retries=…] CMD …`` or
    ``HEALTHCHECK NONE``: the image's Healthcheck, in the Dockerfile parser's words when wrong."""
    rest = value
    flags: dict[str, str] = {}
    while rest.startswith("--"):
        word, _, rest = rest.partition(" ")
        rest = rest.lstrip()
        name, eq, flag_value = word[2:].partition("=")
        if name not in (*_HEALTH_DURATIONS, "retries"):
            raise InvalidArgument(f"Unknown flag: {name}")
        if not eq:
            raise InvalidArgument(f"Missing a value on flag: {name}")
        flags[name] = flag_value
    if not rest:
        raise InvalidArgument("HEALTHCHECK requires at least one argument")
    kind, _, command = rest.partition(" ")
    kind, command = kind.upper(), command.strip()
    if kind == "NONE":
        if command or flags:
            raise InvalidArgument("HEALTHCHECK NONE takes no arguments")
        return {"Test": ["NONE"]}
    if kind != "CMD":
        raise InvalidArgument(f'Unknown type "{kind}" in HEALTHCHECK (try CMD)')
    if not command:
        raise InvalidArgument("Missing command after HEALTHCHECK CMD")
    test = _command(command)
    exec_form = command.startswith("[") and test[:2] != ["/bin/sh", "-c"]
    health: dict[str, Any] = {"Test": ["CMD", *test] if exec_form else ["CMD-SHELL", command]}
    for flag, key in _HEALTH_DURATIONS.items():
        if flags.get(flag):  # an empty value: the default
            nanos = _go_duration(flags[flag])
            if nanos < 1_000_000:
                raise InvalidArgument(f"Interval {json.dumps(flag)} cannot be less than 1ms")
            health[key] = nanos
    if flags.get("retries"):
        try:
            retries = int(flags["retries"])
        except ValueError:
            raise InvalidArgument(f'strconv.ParseInt: parsing {json.dumps(flags["retries"])}: invalid syntax') from None
        if retries < 1:
            raise InvalidArgument(f"--retries must be at least 1 (not {retries})")
        health["Retries"] = retries
    return health


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
        if not value and op != "HEALTHCHECK":  # its own words for that
            raise InvalidArgument(f"change {change!r}: {op} needs a value")
        _apply_one(out, op, value)
    return out


def _apply_one(out: dict[str, Any], op: str, value: str) -> None:
    if op == "HEALTHCHECK":
        out["Healthcheck"] = _healthcheck(value)
    elif op in ("CMD", "ENTRYPOINT"):
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
