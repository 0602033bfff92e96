"""Mount propagation of bind mounts: which modes exist, the ``rootfsPropagation`` a set of
binds needs, and whether the host can give it.

A bind with ``rshared`` propagation only exchanges mounts with the host when its source sits
on a shared mount of the host; ``rslave`` needs a shared or slave one. On a private mount
the runtime starts the container all the same and nothing ever propagates, so the check is
made before the runtime is asked (containerd's and docker's rule, with their wording). The
container's root must also propagate (``linux.rootfsPropagation``): a slave or private
root mount would cut the bind off from its peers.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import attrs

from engine.errors import InvalidArgument

# docker's names; runc and crun take them as mount options
PROPAGATIONS = frozenset({"private", "rprivate", "shared", "rshared", "slave", "rslave"})
SHARED = frozenset({"shared", "rshared"})
SLAVE = frozenset({"slave", "rslave"})
MOUNTINFO = Path("/proc/self/mountinfo")


def check_mode(mode: str, what: str) -> str:
    """``mode`` if it names a propagation, else a clear error naming ``what`` asked for it."""
    if mode not in PROPAGATIONS:
        raise InvalidArgument(f"invalid propagation {mode!r} in {what}: use one of "
                              f"{', '.join(sorted(PROPAGATIONS))}")
    return mode


def rootfs_propagation(modes: list[str]) -> str | None:
    """What the container's root needs for these binds: rshared if any bind is shared
    (mounts go both ways), else rslave if any is a slave, else None (the runtime's
    default, private)."""
    if any(m in SHARED for m in modes):
        return "rshared"
    if any(m in SLAVE for m in modes):
        return "rslave"
    return None


@attrs.frozen
class HostMount:
    mountpoint: str
    optional: tuple[str, ...]  # "shared:N", "master:N", "propagate_from:N", "unbindable"

    @property
    def shared(self) -> bool:
        return any(o.startswith("shared:") for o in self.optional)

    @property
    def slave(self) -> bool:
        return any(o.startswith("master:") for o in self.optional)


def _unescape(field: str) -> str:
    # mountinfo writes space, tab, newline and backslash as \ooo
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def parse_mountinfo(text: str) -> list[HostMount]:
    mounts = []
    for line in text.splitlines():
        fields = line.split(" ")
        if "-" not in fields[6:]:
            continue
        end = fields.index("-", 6)
        mounts.append(HostMount(_unescape(fields[4]), tuple(fields[6:end])))
    return mounts


def mount_of(path: str, mounts: list[HostMount]) -> HostMount:
    """The mount ``path`` (absolute, resolved) lies on: the longest mount point above it,
    and of several on the same point the last one listed (the one on top)."""
    found: HostMount | None = None
    for m in mounts:
        point = m.mountpoint
        if point == "/" or path == point or path.startswith(point + "/"):
            if found is None or len(point) >= len(found.mountpoint):
                found = m
    if found is None:
        raise InvalidArgument(f"cannot find the mount that holds {path!r}")
    return found


def check_source(source: str, mode: str, mounts: list[HostMount]) -> None:
    """Refuse a bind whose host side cannot propagate the way ``mode`` asks."""
    if mode not in SHARED | SLAVE:
        return
    real = os.path.realpath(source)
    host = mount_of(real, mounts)
    if mode in SHARED and not host.shared:
        raise InvalidArgument(f"path {source!r} is mounted on {host.mountpoint!r} but it is not a "
                              f"shared mount: {mode} propagation needs one ({_hint(real)})")
    if mode in SLAVE and not (host.shared or host.slave):
        raise InvalidArgument(f"path {source!r} is mounted on {host.mountpoint!r} but it is not a "
                              f"shared or slave mount: {mode} propagation needs one ({_hint(real)})")


def _hint(path: str) -> str:
    return f"e.g. `mount --bind {path} {path} && mount --make-rshared {path}` on the host"


def check_sources(binds: list[tuple[str, str]]) -> None:
    """``check_source`` for each (source, mode), against this process's mount table.
    Blocking (reads /proc/self/mountinfo, only when a bind asks for propagation)."""
    wanted = [(s, m) for s, m in binds if m in SHARED | SLAVE]
    if not wanted:
        return
    mounts = parse_mountinfo(MOUNTINFO.read_text())
    for source, mode in wanted:
        check_source(source, mode, mounts)
