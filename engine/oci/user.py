"""Resolve a docker-style ``--user`` value against a container's root filesystem.

Accepted forms: ``""`` (root), ``name``, ``uid``, ``name:group``, ``uid:gid``, ``name:gid``,
``uid:group``. Names are looked up in the rootfs's ``/etc/passwd`` and ``/etc/group``;
supplementary groups are the primary gid and, when no group is given, the groups of
``/etc/group`` that list the user as a member (runc's ``GetExecUser`` rules, with the
primary gid dockerd adds).

The rootfs is an untrusted image: its ``/etc/passwd`` may be a symlink to ``/etc/shadow`` of
the *host*. Paths are therefore resolved component by component with every symlink
interpreted inside the rootfs (the filepath-securejoin idea), and the final open refuses a
symlink. Blocking: call through ``trio.to_thread.run_sync`` in the daemon.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import attrs

from engine.errors import InvalidArgument, UnsafeContent

_MAX_SYMLINKS = 40
_MAX_DB_BYTES = 4 * 1024 * 1024  # a passwd file larger than this is hostile, not a real one


@attrs.frozen
class ExecUser:
    uid: int
    gid: int
    additional_gids: tuple[int, ...] = ()
    home: str = "/"


@attrs.frozen
class _PasswdEntry:
    name: str
    uid: int
    gid: int
    home: str


@attrs.frozen
class _GroupEntry:
    name: str
    gid: int
    members: tuple[str, ...]


def secure_join(root: Path, path: str) -> Path:
    """``root/path`` with every symlink resolved as if ``root`` were ``/``.

    The result never leaves ``root``: ``..`` stops at the root and absolute link targets
    restart from it."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    resolved: list[str] = []
    links = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = root.joinpath(*resolved, part)
        try:
            st = os.lstat(candidate)
        except FileNotFoundError:
            resolved.append(part)
            continue
        if not stat.S_ISLNK(st.st_mode):
            resolved.append(part)
            continue
        links += 1
        if links > _MAX_SYMLINKS:
            raise UnsafeContent(f"too many symlinks while resolving {path!r} in {root}")
        target = os.readlink(candidate)
        if target.startswith("/"):
            resolved = []
        parts = [p for p in target.split("/") if p not in ("", ".")] + parts
    return root.joinpath(*resolved)


def read_rootfs_file(root: Path, path: str) -> bytes | None:
    """Contents of ``path`` inside ``root``; None if it does not exist or is not a file."""
    full = secure_join(root, path)
    try:
        fd = os.open(full, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
            return None
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None  # a FIFO or device planted as /etc/passwd must not hang or leak
        data = os.read(fd, _MAX_DB_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > _MAX_DB_BYTES:
        raise UnsafeContent(f"{path} in the image is larger than {_MAX_DB_BYTES} bytes")
    return data


def _parse_passwd(data: bytes | None) -> list[_PasswdEntry]:
    entries: list[_PasswdEntry] = []
    for line in (data or b"").decode("utf-8", "replace").splitlines():
        fields = line.strip().split(":")
        if len(fields) < 4 or line.startswith("#"):
            continue
        try:
            uid, gid = int(fields[2]), int(fields[3])
        except ValueError:
            continue
        home = fields[5] if len(fields) > 5 and fields[5] else "/"
        entries.append(_PasswdEntry(fields[0], uid, gid, home))
    return entries


def _parse_group(data: bytes | None) -> list[_GroupEntry]:
    entries: list[_GroupEntry] = []
    for line in (data or b"").decode("utf-8", "replace").splitlines():
        fields = line.strip().split(":")
        if len(fields) < 3 or line.startswith("#"):
            continue
        try:
            gid = int(fields[2])
        except ValueError:
            continue
        members = tuple(m for m in (fields[3] if len(fields) > 3 else "").split(",") if m)
        entries.append(_GroupEntry(fields[0], gid, members))
    return entries


def _find_user(spec: str, users: list[_PasswdEntry]) -> _PasswdEntry | None:
    for entry in users:
        if entry.name == spec or (spec.isdigit() and entry.uid == int(spec)):
            return entry
    return None


def _resolve_uid(spec: str, users: list[_PasswdEntry]) -> tuple[int, int, str, str | None]:
    """(uid, default gid, home, user name) for the user part of ``--user``."""
    entry = _find_user(spec, users)
    if entry is not None:
        return entry.uid, entry.gid, entry.home, entry.name
    if spec.isdigit():
        return int(spec), 0, "/", None  # docker: unknown numeric uids run with gid 0
    raise InvalidArgument(
        f"unable to find user {spec!r}: no matching entry in the image's /etc/passwd; "
        "use a numeric uid or a user the image defines"
    )


def _resolve_gid(spec: str, groups: list[_GroupEntry]) -> int:
    if spec.isdigit():
        return int(spec)
    for entry in groups:
        if entry.name == spec:
            return entry.gid
    raise InvalidArgument(
        f"unable to find group {spec!r}: no matching entry in the image's /etc/group; "
        "use a numeric gid or a group the image defines"
    )


def resolve_user(rootfs: Path, user: str) -> ExecUser:
    """Resolve ``user`` (docker ``--user`` syntax) against ``rootfs``. Blocking."""
    user_part, _, group_part = (user or "").partition(":")
    if not user_part and group_part:
        raise InvalidArgument(f"invalid user {user!r}: the user part before ':' is empty")
    users = _parse_passwd(read_rootfs_file(rootfs, "/etc/passwd"))
    groups = _parse_group(read_rootfs_file(rootfs, "/etc/group"))
    name: str | None
    if not user_part:
        root = _find_user("0", users)
        uid, gid, home, name = 0, 0, root.home if root else "/root", root.name if root else "root"
    else:
        uid, gid, home, name = _resolve_uid(user_part, users)
    if group_part:
        gid = _resolve_gid(group_part, groups)
    # runc's GetExecUser reads memberships only when no group was given; the primary gid
    # comes first, as dockerd 20.10 and containerd >= 1.6.18 give it (CVE-2023-25173: a
    # process must not keep a supplementary group list that lacks its own gid)
    members = () if group_part else sorted({g.gid for g in groups if name is not None and name in g.members} - {gid})
    return ExecUser(uid=uid, gid=gid, additional_gids=(gid, *members), home=home)


def resolve_groups(rootfs: Path, groups: list[str]) -> list[int]:
    """docker's ``--group-add``: numeric gids as they are, names looked up in the image's
    ``/etc/group``. Blocking (reads the rootfs)."""
    if all(g.isdigit() for g in groups):
        return [int(g) for g in groups]
    entries = _parse_group(read_rootfs_file(rootfs, "/etc/group"))
    return [_resolve_gid(g, entries) for g in groups]
