"""Translation between docker's JSON shapes and the engine's.

Docker clients decode responses into typed structs (Go) or check fields by name (docker-py):
a number where a string is expected, or a float where an int is, breaks them. Everything
the Docker API sends goes through here, so the types are right in one place.
"""

from __future__ import annotations

import json
import socket
import struct
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from engine.actors.events import Event
from engine.errors import InvalidArgument

STDOUT, STDERR = 1, 2
STREAM_IDS = {"stdin": 0, "stdout": STDOUT, "stderr": STDERR}


# --- stdcopy: docker's multiplexed stdout/stderr framing ------------------------------------------


def stdcopy_frame(stream: str, data: bytes) -> bytes:
    """One frame: [stream id, 0, 0, 0, big-endian uint32 length] + data."""
    return struct.pack(">BxxxL", STREAM_IDS.get(stream, STDOUT), len(data)) + data


# --- filters, times ------------------------------------------------------------------------------


def parse_filters(text: str) -> dict[str, list[str]]:
    """docker's ``filters`` query parameter: ``{"key": ["v"]}`` or the older
    ``{"key": {"v": true}}`` (what the Go client still sends)."""
    if not text:
        return {}
    try:
        doc = json.loads(text)
    except ValueError as e:
        raise InvalidArgument(f"invalid filters {text!r}: {e}") from None
    if not isinstance(doc, dict):
        raise InvalidArgument(f"invalid filters {text!r}: expected a JSON object")
    filters: dict[str, list[str]] = {}
    for key, value in doc.items():
        if isinstance(value, dict):
            filters[key] = [str(k) for k, on in value.items() if on]
        elif isinstance(value, list):
            filters[key] = [str(v) for v in value]
        elif isinstance(value, str):
            filters[key] = [value]
        else:
            raise InvalidArgument(f"invalid filter {key!r}: expected a list of strings")
    return {k: v for k, v in filters.items() if v}


def parse_timestamp(text: str, name: str) -> float | None:
    """docker's since/until: unix seconds (``1700000000.123456789``) or RFC 3339."""
    text = text.strip()
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise InvalidArgument(f"invalid {name} {text!r}: use unix seconds or an RFC 3339 time") from None


def unix_seconds(iso: str | None) -> int:
    """An RFC 3339 time (what images record) as whole unix seconds (docker's list shapes)."""
    if not iso:
        return 0
    head = iso.replace("Z", "+00:00")
    if "." in head:  # datetime takes at most microseconds
        base, _, rest = head.partition(".")
        digits = "".join(ch for ch in rest if ch.isdigit())
        head = f"{base}.{digits[:6]}{rest[len(digits):]}"
    try:
        return int(datetime.fromisoformat(head).timestamp())
    except ValueError:
        return 0


def rfc3339_nano(ts: float) -> str:
    """docker's log timestamp: ``2024-01-01T00:00:00.123456789Z``."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int((ts % 1) * 1e9):09d}Z"


def rfc3339(ts: float) -> str:
    if not ts:
        return "0001-01-01T00:00:00Z"
    return rfc3339_nano(ts)


# --- events --------------------------------------------------------------------------------------


def _attribute_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value)
    return str(value)


EXEC_ACTIONS_WITH_COMMAND = ("exec_create", "exec_start")


def docker_event(event: Event, exec_ids: Callable[[str], str] | None = None) -> dict[str, Any]:
    """An engine event in docker's message shape (attributes are strings in docker).
    ``exec_ids``: the Docker exec id of an exec event's ``execID`` (a runtime session's)."""
    attributes = {k: _attribute_text(v) for k, v in event.attributes.items()}
    action = event.action
    if event.type == "daemon":
        attributes.setdefault("name", socket.gethostname())  # dockerd names the daemon's host
    elif event.type == "network" and "driver" in attributes:
        attributes.setdefault("type", attributes.pop("driver"))  # dockerd's name for the driver
    elif event.type == "container" and action.startswith("exec_"):
        if exec_ids is not None and attributes.get("execID"):
            attributes["execID"] = exec_ids(attributes["execID"])
        command = attributes.pop("command", None) if action in EXEC_ACTIONS_WITH_COMMAND else None
        if command is not None:
            action = f"{action}: {command}"  # dockerd's "exec_start: sh -c …"
    doc: dict[str, Any] = {
        "Type": event.type,
        "Action": action,
        "Actor": {"ID": event.id, "Attributes": attributes},
        "scope": "local",
        "time": int(event.time),
        "timeNano": int(event.time * 1e9),
    }
    if event.type in ("container", "image"):
        # the fields docker kept from its first event format; older clients read them
        doc["status"] = action
        doc["id"] = event.id
        if event.type == "container" and "image" in attributes:
            doc["from"] = attributes["image"]
    return doc


# --- emptiness (refusing unsupported fields by name) ---------------------------------------------


def is_empty(value: Any) -> bool:
    """Whether a client left a field at its zero value (Go clients send every field)."""
    if value is None or value is False or value == "" or value == 0:
        return True
    if isinstance(value, list):
        return all(is_empty(v) for v in value)
    if isinstance(value, dict):
        return all(is_empty(v) for v in value.values())
    return False


def refuse_unsupported(section: str, doc: dict[str, Any], handled: set[str], ignored: set[str]) -> None:
    """400 naming the first field the engine cannot honour (set to a non-zero value)."""
    for key, value in doc.items():
        if key in handled or key in ignored or is_empty(value):
            continue
        raise InvalidArgument(f"{section}.{key} is not supported by engine (got {json.dumps(value)[:80]})")


def str_list(value: Any, field: str) -> list[str] | None:
    """docker's strslice: a list of strings, one string, or null."""
    if value is None:
        return None
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise InvalidArgument(f"{field} must be a list of strings")


def str_map(value: Any, field: str) -> dict[str, str]:
    if value is None:
        return {}
    if isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        return dict(value)
    raise InvalidArgument(f"{field} must be an object of strings")
