"""The private mount namespace a stopped container's ``cp`` works in. Run by
engine.actors.copy_view as ``python -I -S <this file>``: the standard library only.

A stopped container has no mount namespace of its own, so a copy would see its bare root
filesystem. This process unshares a mount namespace (the daemon's threads cannot: a
multi-threaded process may not), makes it private, and bind-mounts each volume's and
bind's host path onto the container's root filesystem at its destination there, never in
the daemon's namespace. It answers one JSON line and waits: the daemon copies through
``/proc/<this pid>/root/<rootfs>``. When its stdin closes (the last copy ended, or the
daemon died) it exits, and the namespace with every mount in it goes too: nothing is left
to unmount, whatever failed on the way.

Every destination is resolved with openat2(RESOLVE_IN_ROOT): a symlink in the image at a
destination resolves inside the container's root, as the runtime resolves it at start, and
the mount goes onto that fd (``/proc/self/fd/N``), so a host path is never a mount target.

stdin: {"root": "/path/of/the/mounted/rootfs", "mounts": [{"source", "destination",
"read_only"}...]} (in order: a mount inside another's destination after it).
stdout: {"ok": true} or {"error": "why"}.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import posixpath
import stat
import sys
from typing import Any

CLONE_NEWNS = 0x00020000
MS_RDONLY = 0x1
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000
_SYS_OPENAT2 = 437  # the unified syscall table's number, on every architecture
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_IN_ROOT = 0x10
MAX_SYMLINKS = 40
_EAGAIN_RETRIES = 1000

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p]


class Failure(Exception):
    """Why a mount could not be made: told to the daemon, which tells the user."""


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


def open_in_root(root_fd: int, path: str, flags: int) -> int:
    """``path`` opened as if ``root_fd`` were ``/`` (as engine.supervisor.copy does)."""
    rel = path.lstrip("/") or "."
    how = _OpenHow(flags | os.O_CLOEXEC, 0, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)
    err = 0
    for _ in range(_EAGAIN_RETRIES):
        fd = _libc.syscall(_SYS_OPENAT2, root_fd, rel.encode(), ctypes.byref(how), ctypes.sizeof(how))
        if fd >= 0:
            return int(fd)
        err = ctypes.get_errno()
        if err != errno.EAGAIN:  # EAGAIN: a rename or mount elsewhere raced a ".." step
            break
    raise OSError(err, os.strerror(err), path)


def _mount(source: str | None, target: str, flags: int, what: str) -> None:
    if _libc.mount(source.encode() if source else None, target.encode(), None, flags, None) != 0:
        err = ctypes.get_errno()
        raise Failure(f"{what}: {os.strerror(err)}")


def ensure(root_fd: int, path: str, is_dir: bool, hops: int = 0) -> int:
    """An ``O_PATH`` fd of ``path`` in the root, made (a directory, or an empty file for a
    file's bind) when missing, as the runtime makes a mount point; each step resolved in
    the root, a dangling symlink followed there too."""
    try:
        return open_in_root(root_fd, path, os.O_PATH)
    except FileNotFoundError:
        pass
    norm = posixpath.normpath("/" + path.lstrip("/"))
    parent, name = posixpath.split(norm)
    parent_fd = ensure(root_fd, parent, True, hops)
    try:
        try:
            if is_dir:
                os.mkdir(name, 0o755, dir_fd=parent_fd)
            else:
                os.close(os.open(name, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC,
                                 0o644, dir_fd=parent_fd))
        except FileExistsError:
            st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
            if not stat.S_ISLNK(st.st_mode) or hops >= MAX_SYMLINKS:
                raise
            target = os.readlink(name, dir_fd=parent_fd)
            return ensure(root_fd, posixpath.join(parent, target), is_dir, hops + 1)
    finally:
        os.close(parent_fd)
    return open_in_root(root_fd, path, os.O_PATH)


def bind(root_fd: int, source: str, destination: str, read_only: bool) -> None:
    try:
        source_fd = os.open(source, os.O_PATH | os.O_CLOEXEC)
    except OSError as e:
        raise Failure(f"the source {source} of the mount at {destination}: {e.strerror}") from None
    try:
        is_dir = stat.S_ISDIR(os.fstat(source_fd).st_mode)
        try:
            target_fd = ensure(root_fd, destination, is_dir)
        except OSError as e:
            raise Failure(f"cannot make the mount point {destination} in the container: {e.strerror}") from None
        try:
            _mount(f"/proc/self/fd/{source_fd}", f"/proc/self/fd/{target_fd}", MS_BIND | MS_REC,
                   f"mounting {source} at {destination}")
        finally:
            os.close(target_fd)
    finally:
        os.close(source_fd)
    if read_only:  # the new mount's own root now: reopened through it
        top = open_in_root(root_fd, destination, os.O_PATH)
        try:
            _mount(None, f"/proc/self/fd/{top}", MS_REMOUNT | MS_BIND | MS_RDONLY,
                   f"making {destination} read-only")
        finally:
            os.close(top)


def prepare(plan: dict[str, Any]) -> None:
    if _libc.unshare(CLONE_NEWNS) != 0:
        raise Failure(f"cannot make a mount namespace: {os.strerror(ctypes.get_errno())}")
    # nothing made here may reach the daemon's namespace (the host's / is often shared)
    _mount(None, "/", MS_REC | MS_PRIVATE, "making the mounts private")
    root_fd = os.open(plan["root"], os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        for m in plan["mounts"]:
            bind(root_fd, m["source"], m["destination"], bool(m.get("read_only")))
    finally:
        os.close(root_fd)


def main() -> int:
    try:
        prepare(json.loads(sys.stdin.readline()))
    except (Failure, OSError, ValueError, KeyError) as e:
        sys.stdout.write(json.dumps({"error": str(e)}) + "\n")
        sys.stdout.flush()
        return 1
    sys.stdout.write(json.dumps({"ok": True}) + "\n")
    sys.stdout.flush()
    sys.stdin.read()  # until the daemon closes it
    return 0


if __name__ == "__main__":
    sys.exit(main())
