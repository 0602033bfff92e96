"""A container's writable layer (overlay's upper directory) as changes and as an OCI layer.

The upper directory holds what the container wrote: new and copied-up entries, overlay
whiteouts (a char device 0:0) for deleted ones, and the ``trusted.overlay.opaque``
xattr on a directory that replaced a lower one. ``changes`` reads it as docker's diff
(A: added, C: changed, D: deleted; an entry is A when no lower layer has it); ``write_layer``
turns it into an OCI layer tar, whiteouts as ``.wh.NAME`` and opaque directories with
``.wh..wh..opq`` (the reverse of engine.plugins.storage_overlay.unpack). Blocking; the
walk goes through file descriptors only (engine.store.treetar), never following a link.
"""

from __future__ import annotations

import os
import stat
import tarfile
from pathlib import Path

from engine.store.treetar import DIR_FLAGS, TreeWriter, open_stream_tar, tar_info

from .unpack import OPAQUE_MARKER, OPAQUE_XATTR

WHITEOUT_PREFIX = ".wh."


def is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def is_opaque(fd: int) -> bool:
    try:
        return os.getxattr(fd, OPAQUE_XATTR) == b"y"
    except OSError:
        return False


def _in_lower(lowers: list[Path], rel: str) -> bool:
    return any(os.path.lexists(lower / rel) for lower in lowers)


def changes(upper: Path, lowers: list[Path]) -> list[tuple[str, str]]:
    """docker diff's list: (kind, path) with kind A, C or D, sorted by path."""
    out: list[tuple[str, str]] = []
    if not upper.is_dir():
        return out
    root = os.open(upper, DIR_FLAGS)
    try:
        _walk(root, "", lowers, out)
    finally:
        os.close(root)
    return sorted(out, key=lambda item: item[1])


def _walk(fd: int, rel: str, lowers: list[Path], out: list[tuple[str, str]]) -> None:
    with os.scandir(fd) as entries:
        names = sorted(e.name for e in entries)
    for name in names:
        path = f"{rel}/{name}"
        st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        if is_whiteout(st):
            out.append(("D", path))
            continue
        existed = _in_lower(lowers, path.lstrip("/"))
        out.append(("C" if existed else "A", path))
        if stat.S_ISDIR(st.st_mode):
            child = os.open(name, DIR_FLAGS, dir_fd=fd)
            try:
                _walk(child, path, lowers, out)
            finally:
                os.close(child)


def write_layer(upper: Path, dest: Path) -> None:
    """The upper directory as an uncompressed OCI layer tar at ``dest``."""
    with open(dest, "wb") as out:
        tar = open_stream_tar(out)

        def hook(parent_fd: int, name: str, st: os.stat_result, arcname: str) -> bool:
            if is_whiteout(st):
                head, _, base = arcname.rpartition("/")
                info = tar_info(f"{head}/{WHITEOUT_PREFIX}{base}" if head else WHITEOUT_PREFIX + base, st)
                info.type, info.mode, info.devmajor, info.devminor = tarfile.REGTYPE, 0o600, 0, 0
                info.size = 0
                tar.addfile(info)
                return False
            if stat.S_ISDIR(st.st_mode):
                fd = os.open(name, DIR_FLAGS, dir_fd=parent_fd)
                try:
                    opaque = is_opaque(fd)
                    tar.addfile(tar_info(arcname + "/", st))
                    if opaque:
                        marker = tar_info(f"{arcname}/{OPAQUE_MARKER}", st)
                        marker.type, marker.mode, marker.size = tarfile.REGTYPE, 0o600, 0
                        tar.addfile(marker)
                    writer.add_dir_fd(fd, arcname, st, include_self=False)
                finally:
                    os.close(fd)
                return False
            return True

        writer = TreeWriter(tar, hook)
        if upper.is_dir():
            root = os.open(upper, DIR_FLAGS)
            try:
                writer.add_dir_fd(root, "", include_self=False)
            finally:
                os.close(root)
        tar.close()
