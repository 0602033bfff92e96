"""Host devices in a container: docker's ``--device HOST[:CONTAINER[:PERMISSIONS]]`` and
the whole of the host's ``/dev`` for ``--privileged``, as OCI ``linux.devices`` entries
(the runtime creates the nodes) and the devices cgroup's allow rules.

Blocking (stats the host's /dev): call from a worker thread in the daemon.
"""

from __future__ import annotations

import os
import stat
from typing import Any

from engine.errors import InvalidArgument

# What runc's HostDevices leaves out of a privileged container's /dev: the runtime's own
# mounts there, and the host's console.
_SKIPPED_DIRS = {"pts", "shm", "fd", "mqueue", ".lxc", ".lxd-mounts", ".udev"}
_SKIPPED_FILES = {"/dev/console"}


def parse_device(spec: str) -> tuple[str, str, str]:
    """docker's ``--device`` value as (host path, container path, permissions)."""
    parts = spec.split(":")
    if not 1 <= len(parts) <= 3 or not parts[0]:
        raise InvalidArgument(f"invalid device specification: {spec}")
    host = parts[0]
    container = host
    permissions = "rwm"
    if len(parts) == 2:
        if _valid_permissions(parts[1]):
            permissions = parts[1]
        else:
            container = parts[1]
    elif len(parts) == 3:
        container, permissions = parts[1], parts[2]
        if not _valid_permissions(permissions):
            raise InvalidArgument(f"invalid device mode: {permissions}")
    for path in (host, container):
        if not path.startswith("/"):
            raise InvalidArgument(f"{path} is not an absolute path")
    return os.path.normpath(host), os.path.normpath(container), permissions


def _valid_permissions(mode: str) -> bool:
    return bool(mode) and len(mode) <= 3 and all(ch in "rwm" for ch in mode) and len(set(mode)) == len(mode)


def _node(path: str, destination: str) -> dict[str, Any] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    if stat.S_ISCHR(st.st_mode):
        kind = "c"
    elif stat.S_ISBLK(st.st_mode):
        kind = "b"
    else:
        return None
    return {"path": destination, "type": kind, "major": os.major(st.st_rdev), "minor": os.minor(st.st_rdev),
            "fileMode": stat.S_IMODE(st.st_mode), "uid": st.st_uid, "gid": st.st_gid}


def _walk(root: str, destination: str) -> list[dict[str, Any]]:
    """The device nodes under the host directory ``root``, placed under ``destination``."""
    out = []
    for directory, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not (directory == "/dev" and d in _SKIPPED_DIRS))
        for name in sorted(files):
            path = os.path.join(directory, name)
            if path in _SKIPPED_FILES:
                continue
            node = _node(path, os.path.join(destination, os.path.relpath(path, root)))
            if node is not None:
                out.append(node)
    return out


def device_nodes(spec: str) -> list[dict[str, Any]]:
    """The OCI device entries of one ``--device`` value (a directory gives every device under it)."""
    host, container, _ = parse_device(spec)
    if os.path.isdir(host):
        nodes = _walk(host, container)
        if not nodes:
            raise InvalidArgument(f"error gathering device information while adding custom device {host!r}: "
                                  "no devices found under it")
        return nodes
    node = _node(host, container)
    if node is None:
        if not os.path.exists(host):
            raise InvalidArgument(f"error gathering device information while adding custom device {host!r}: "
                                  "no such file or directory")
        raise InvalidArgument(f"error gathering device information while adding custom device {host!r}: "
                              "not a device node")
    return [node]


def host_devices(specs: list[str] | None = None) -> list[dict[str, Any]]:
    """With ``specs``: the devices they name; without: every device of the host's /dev (a
    privileged container's)."""
    if specs is None:
        return _walk("/dev", "/dev")
    out: list[dict[str, Any]] = []
    for spec in specs:
        out += device_nodes(spec)
    return out


def device_rules(specs: list[str]) -> list[dict[str, Any]]:
    """The devices cgroup's allow rules for ``specs`` (after the default deny-all)."""
    rules = []
    for spec in specs:
        _, _, permissions = parse_device(spec)
        for node in device_nodes(spec):
            rules.append({"allow": True, "type": node["type"], "major": node["major"], "minor": node["minor"],
                          "access": permissions})
    return rules


def check_devices(specs: list[str]) -> None:
    """Blocking: every ``--device`` value parses and names a device now (docker checks at create)."""
    for spec in specs:
        device_nodes(spec)

