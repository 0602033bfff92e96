"""Named network namespaces bind-mounted as files under a directory the engine chooses.

Like ``ip netns`` but anywhere (``ip netns add`` only knows /run/netns): ``unshare
--net=<file>`` creates a namespace and bind-mounts it onto ``<file>``, so it outlives every
process in it. The directory is made a shared mount of itself (as ``ip netns`` does with
/run/netns) so that an unmount here also reaches copies of the mount made in container
mount namespaces; otherwise a deleted namespace could linger, pinned by such a copy.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import trio

from engine.errors import InvalidArgument, NotFound
from engine.network._proc import run

CLONE_NEWNET = 0x40000000
T = TypeVar("T")
_libc: Any = None


def _setns(fd: int) -> None:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def call_in_netns(netns_path: str | Path, fn: Callable[[], T]) -> T:
    """Blocking: ``fn()`` with the calling thread in the network namespace at ``netns_path``
    (setns; Python 3.11 has no os.setns), and back in its own one after. A socket made
    meanwhile keeps the namespace it was made in. Call it from a thread made for the
    purpose, never one of trio's cached workers: should going back fail, the thread must
    end there."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        target = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(target)
            try:
                return fn()
            finally:
                _setns(own)
        finally:
            os.close(target)
    finally:
        os.close(own)


def _check_name(name: str) -> str:
    if not name or "/" in name or name in (".", "..") or name.startswith("."):
        raise InvalidArgument(f"invalid network namespace name {name!r}: use a container id")
    return name


def path_for(netns_dir: Path, name: str) -> Path:
    return netns_dir / _check_name(name)


def _mount_points() -> set[str]:
    with open("/proc/self/mountinfo") as f:
        # Field 5 is the mount point; octal escapes (\040) do not occur in our paths.
        return {line.split()[4] for line in f}


def is_mounted(path: Path) -> bool:
    """Whether ``path`` is a mount point (blocking: reads /proc/self/mountinfo)."""
    return str(path) in _mount_points()


async def _ensure_shared_dir(netns_dir: Path) -> None:
    await trio.to_thread.run_sync(lambda: netns_dir.mkdir(parents=True, exist_ok=True))
    if not await trio.to_thread.run_sync(is_mounted, netns_dir):
        await run(["mount", "--bind", str(netns_dir), str(netns_dir)])
    # Private first so that the shared peer group is ours alone, not the parent's.
    await run(["mount", "--make-private", str(netns_dir)])
    await run(["mount", "--make-shared", str(netns_dir)])


async def create(netns_dir: Path, name: str) -> Path:
    """Create namespace ``name`` (idempotent: an existing one is returned as it is)."""
    path = path_for(netns_dir, name)
    await _ensure_shared_dir(netns_dir)
    if await trio.to_thread.run_sync(is_mounted, path):
        return path
    await trio.to_thread.run_sync(lambda: path.touch(mode=0o444, exist_ok=True))
    try:
        await run(["unshare", f"--net={path}", "true"])
    except BaseException:
        await trio.to_thread.run_sync(lambda: path.unlink(missing_ok=True))
        raise
    return path


async def delete(netns_dir: Path, name: str) -> None:
    """Unmount and remove namespace ``name``; a missing one is not an error."""
    path = path_for(netns_dir, name)
    if await trio.to_thread.run_sync(is_mounted, path):
        # Lazy: a process still inside (a leftover nsenter) must not make delete fail;
        # the namespace goes away with its last user.
        await run(["umount", "--lazy", str(path)])
    await trio.to_thread.run_sync(lambda: path.unlink(missing_ok=True))


async def exists(netns_dir: Path, name: str) -> bool:
    return await trio.to_thread.run_sync(is_mounted, path_for(netns_dir, name))


async def list_names(netns_dir: Path) -> list[str]:
    """Names of the namespaces under ``netns_dir`` (files, mounted or left half-made)."""

    def _scan() -> list[str]:
        try:
            return sorted(e.name for e in os.scandir(netns_dir) if e.is_file() and not e.name.startswith("."))
        except FileNotFoundError:
            return []

    return await trio.to_thread.run_sync(_scan)


async def release_dir(netns_dir: Path) -> None:
    """Undo the shared self-bind of ``netns_dir`` once no namespace is left in it."""
    names = await list_names(netns_dir)
    if names:
        raise InvalidArgument(
            f"{netns_dir} still holds network namespaces {names}; delete them first"
        )
    if await trio.to_thread.run_sync(is_mounted, netns_dir):
        await run(["umount", str(netns_dir)])


def require_exists(path: Path) -> None:
    if not is_mounted(path):
        raise NotFound(f"network namespace {path} does not exist; create it first")
