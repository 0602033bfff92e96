"""Remove or measure a directory tree of any depth, without following symlinks.

A container (or an image layer) decides what its tree looks like: it may nest directories
thousands of levels deep, far past Python's recursion limit (``shutil.rmtree`` and
``os.walk`` recurse) and past PATH_MAX (so nothing here builds full paths). The walk below
is iterative and goes through directory fds with ``O_NOFOLLOW``: a symlink is removed,
never followed. It holds one directory fd at a time, whatever the depth: it climbs back up
through ``..`` and checks that ``..`` is the directory it came down from (same device and
inode), so a directory moved away meanwhile stops the walk instead of sending it
elsewhere.

Blocking: call from a worker thread.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class TreeMoved(OSError):
    """A directory being walked was moved out of the tree meanwhile."""


def remove_tree(path: str | os.PathLike[str]) -> None:
    """Delete ``path`` and everything under it; a missing ``path`` is fine, and so are
    entries that vanish meanwhile. A symlink at ``path`` is removed itself.

    Errors: OSError from the kernel (EBUSY for a mount point inside, EPERM for an
    immutable file, ...), ``TreeMoved``."""
    parent, name = _split(path)
    try:
        parent_fd = os.open(parent, _DIR_FLAGS & ~os.O_NOFOLLOW)
    except FileNotFoundError:
        return
    try:
        remove_at(parent_fd, name)
    finally:
        os.close(parent_fd)


def tree_bytes(path: str | os.PathLike[str]) -> int:
    """The apparent size of everything under ``path`` (files, links and directories, as
    ``lstat`` gives them; not ``path`` itself). Unreadable parts count as 0."""
    total = 0

    def add(dir_fd: int, name: str, st: os.stat_result) -> None:
        nonlocal total
        total += st.st_size

    try:
        fd = os.open(path, _DIR_FLAGS)
    except OSError:
        return 0
    _walk(fd, on_entry=add, remove=False)
    return total


def _split(path: str | os.PathLike[str]) -> tuple[str, str]:
    text = os.fspath(path).rstrip("/")
    if not text or text in (".", ".."):
        raise ValueError(f"refusing to remove {os.fspath(path)!r}")
    parent, name = os.path.split(text)
    return parent or ".", name


def remove_at(parent_fd: int, name: str, *, again: bool = True) -> None:
    """``remove_tree`` for the entry ``name`` in the open directory ``parent_fd``."""
    try:
        fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
    except FileNotFoundError:
        return
    except OSError as e:
        if e.errno not in (errno.ENOTDIR, errno.ELOOP):
            raise
        _unlink(parent_fd, name)  # a file or a symlink: gone by itself
        return
    _walk(fd, on_entry=None, remove=True)
    _rmdir(parent_fd, name, again=again)


def _walk(
    fd: int,
    *,
    on_entry: Callable[[int, str, os.stat_result], None] | None,
    remove: bool,
) -> None:
    """Visit the tree under the open directory ``fd`` (closed here), depth first, one fd at
    a time; with ``remove``, delete everything under it (``fd``'s directory stays)."""
    # One frame per directory above the current one: its identity, and its subdirectories
    # still to visit. Names only, so memory grows with the tree's shape, not with fds.
    stack: list[tuple[int, int, str, list[str]]] = []
    try:
        pending = _scan(fd, on_entry, remove)
        while True:
            if pending:
                name = pending.pop()
                try:
                    child = os.open(name, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    continue
                except OSError as e:
                    if e.errno not in (errno.ENOTDIR, errno.ELOOP):
                        raise
                    if remove:  # replaced by a file or symlink since the scan
                        _unlink(fd, name)
                    continue
                st = os.fstat(fd)
                stack.append((st.st_dev, st.st_ino, name, pending))
                os.close(fd)
                fd = child
                pending = _scan(fd, on_entry, remove)
                continue
            if not stack:
                return
            dev, ino, name, pending = stack.pop()
            parent = os.open("..", _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = parent
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) != (dev, ino):
                raise TreeMoved(errno.ESTALE, "a directory was moved out of the tree being walked")
            if remove:
                _rmdir(fd, name)
    finally:
        os.close(fd)


def _scan(
    fd: int,
    on_entry: Callable[[int, str, os.stat_result], None] | None,
    remove: bool,
) -> list[str]:
    """The subdirectories of ``fd``; with ``remove``, everything else in it is unlinked."""
    with os.scandir(fd) as entries:
        listed = [(entry.name, entry.is_dir(follow_symlinks=False)) for entry in entries]
    subdirs = []
    for name, is_dir in listed:
        if on_entry is not None:
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            on_entry(fd, name, st)
            is_dir = stat.S_ISDIR(st.st_mode)
        if is_dir:
            subdirs.append(name)
        elif remove:
            _unlink(fd, name)
    return subdirs


def _unlink(dir_fd: int, name: str) -> None:
    try:
        os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass
    except IsADirectoryError:  # became a directory since it was listed: walk it too
        remove_at(dir_fd, name, again=False)


def _rmdir(dir_fd: int, name: str, *, again: bool = True) -> None:
    try:
        os.rmdir(name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass
    except OSError as e:
        if e.errno != errno.ENOTEMPTY or not again:
            raise
        # Something appeared meanwhile: one more round, then the error stands.
        remove_at(dir_fd, name, again=False)

