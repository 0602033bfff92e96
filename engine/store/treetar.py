"""A directory tree as a tar stream, read only through file descriptors (blocking).

Every entry is opened relative to its parent's fd with ``O_NOFOLLOW``: a symlink in the
tree is archived as a symlink and never followed, and a directory swapped for a symlink
while the walk runs makes the open fail instead of leading out of the tree. The tree can
therefore belong to someone else (a container's root filesystem, its writable layer).

Kept: type, mode (with setuid/setgid/sticky), numeric owner, mtime, hard links (by inode
within the stream), device numbers; extended attributes are not copied.
"""

from __future__ import annotations

import os
import stat
import tarfile
from collections.abc import Callable
from typing import IO, Any

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK

# (parent dir fd, entry name, its lstat, its name in the archive) -> whether to archive it
# as usual; a hook may add entries of its own (overlay whiteouts) and return False.
EntryHook = Callable[[int, str, os.stat_result, str], bool]


def tar_info(arcname: str, st: os.stat_result, *, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(arcname)
    info.mode = stat.S_IMODE(st.st_mode)
    info.uid, info.gid = st.st_uid, st.st_gid
    info.uname = info.gname = ""
    info.mtime = int(st.st_mtime)
    mode = st.st_mode
    if stat.S_ISREG(mode):
        info.type, info.size = tarfile.REGTYPE, st.st_size
    elif stat.S_ISDIR(mode):
        info.type = tarfile.DIRTYPE
    elif stat.S_ISLNK(mode):
        info.type, info.linkname = tarfile.SYMTYPE, linkname
    elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        info.type = tarfile.CHRTYPE if stat.S_ISCHR(mode) else tarfile.BLKTYPE
        info.devmajor, info.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
    elif stat.S_ISFIFO(mode):
        info.type = tarfile.FIFOTYPE
    else:
        raise OSError(f"{arcname}: cannot archive a socket")
    return info


class TreeWriter:
    """Writes entries into ``tar``; remembers inodes for hard links."""

    def __init__(self, tar: tarfile.TarFile, hook: EntryHook | None = None) -> None:
        self.tar = tar
        self.hook = hook
        self._links: dict[tuple[int, int], str] = {}

    def add(self, parent_fd: int, name: str, arcname: str, st: os.stat_result | None = None) -> None:
        """Archive ``name`` (relative to ``parent_fd``) as ``arcname``, and below it."""
        if st is None:
            st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
        if self.hook is not None and not self.hook(parent_fd, name, st, arcname):
            return
        if stat.S_ISDIR(st.st_mode):
            fd = os.open(name, DIR_FLAGS, dir_fd=parent_fd)
            try:
                self.add_dir_fd(fd, arcname, st)
            finally:
                os.close(fd)
        else:
            self.add_leaf(parent_fd, name, arcname, st)

    def add_dir_fd(self, fd: int, arcname: str, st: os.stat_result | None = None,
                   *, include_self: bool = True) -> None:
        if include_self and arcname not in ("", "."):
            self.tar.addfile(tar_info(arcname.rstrip("/") + "/", st or os.fstat(fd)))
        with os.scandir(fd) as entries:
            names = sorted(e.name for e in entries)
        prefix = "" if arcname in ("", ".") else arcname.rstrip("/") + "/"
        for child in names:
            try:
                self.add(fd, child, prefix + child)
            except FileNotFoundError:
                continue  # removed while we walked: the container is alive

    def add_leaf(self, parent_fd: int, name: str, arcname: str, st: os.stat_result) -> None:
        if stat.S_ISLNK(st.st_mode):
            self.tar.addfile(tar_info(arcname, st, linkname=os.readlink(name, dir_fd=parent_fd)))
            return
        if not stat.S_ISDIR(st.st_mode) and st.st_nlink > 1:
            key = (st.st_dev, st.st_ino)
            first = self._links.get(key)
            if first is not None:
                info = tar_info(arcname, st)
                info.type, info.size, info.linkname = tarfile.LNKTYPE, 0, first
                self.tar.addfile(info)
                return
            self._links[key] = arcname
        if stat.S_ISREG(st.st_mode):
            fd = os.open(name, FILE_FLAGS, dir_fd=parent_fd)
            with os.fdopen(fd, "rb") as f:
                now = os.fstat(f.fileno())
                info = tar_info(arcname, now)
                self.tar.addfile(info, _Exact(f, info.size))
            return
        self.tar.addfile(tar_info(arcname, st))


class _Exact:
    """Exactly ``size`` bytes of ``f``: a file that grows or shrinks while it is archived
    (a running container writes) must not break the tar's framing."""

    def __init__(self, f: IO[bytes], size: int) -> None:
        self.f = f
        self.left = size

    def read(self, n: int = -1) -> bytes:
        if self.left <= 0:
            return b""
        want = self.left if n < 0 else min(n, self.left)
        data = self.f.read(want)
        if len(data) < want:
            data += b"\0" * (want - len(data))
        self.left -= len(data)
        return data


def open_stream_tar(out: Any) -> tarfile.TarFile:
    """A tar writer on a stream (PAX: long names, large ids and sizes)."""
    return tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT)
