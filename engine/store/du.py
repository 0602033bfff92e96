"""Disk usage as ``du`` counts it: allocated blocks (``st_blocks * 512``) of a tree, the top
directory included, each inode once however many hard links it has."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable

from engine.store.rmtree import _DIR_FLAGS, _walk


def disk_usage(path: str | os.PathLike[str], seen: set[tuple[int, int]] | None = None) -> int:
    """Bytes ``du -s --block-size=1 path`` reports (blocking). ``seen`` carries the inodes
    already counted across calls (``du A B`` counts a file linked into both once)."""
    seen = set() if seen is None else seen
    total = 0

    def add(st: os.stat_result) -> None:
        nonlocal total
        key = (st.st_dev, st.st_ino)
        if key in seen:
            return
        seen.add(key)
        total += st.st_blocks * 512

    try:
        fd = os.open(path, _DIR_FLAGS)
    except NotADirectoryError:
        try:
            add(os.lstat(path))
        except OSError:
            pass
        return total
    except OSError:
        return 0
    add(os.fstat(fd))
    _walk(fd, on_entry=lambda _dir, _name, st: add(st), remove=False)
    return total


def content_size(path: str | os.PathLike[str]) -> int:
    """The bytes of a tree's files (``st_size`` of everything but directories, each inode
    once), blocking: docker's size of a writable layer (``SizeRw``), which an untouched
    container has none of, where du counts its directories' blocks."""
    seen: set[tuple[int, int]] = set()
    total = 0

    def add(st: os.stat_result) -> None:
        nonlocal total
        key = (st.st_dev, st.st_ino)
        if stat.S_ISDIR(st.st_mode) or key in seen:
            return
        seen.add(key)
        total += st.st_size

    try:
        fd = os.open(path, _DIR_FLAGS)
    except OSError:
        return 0
    _walk(fd, on_entry=lambda _dir, _name, st: add(st), remove=False)
    return total


def disk_usage_all(paths: Iterable[str | os.PathLike[str]]) -> int:
    seen: set[tuple[int, int]] = set()
    return sum(disk_usage(p, seen) for p in paths)
