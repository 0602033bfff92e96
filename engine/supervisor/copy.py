"""``cp`` and ``export``: files in and out of a container's root filesystem as tar streams.

Everything here works on an fd of the container's root (``commands.OpenRootfs``), never on
a host path. A path the user names is resolved with ``openat2(RESOLVE_IN_ROOT)``: ``..``
stops at the root and a symlink (absolute or relative, at any depth) resolves as it would
inside the container, so a link to ``/`` or ``../../..`` can never lead the engine to read
or write on the host. Below the resolved path, the walk (engine.store.treetar) and the
extraction open every entry relative to its parent's fd with ``O_NOFOLLOW``.

Copying in extracts an uploaded tar (``Uploads``: the client sends it in chunks first, so
a slow client never holds the container) into a directory resolved the same way; each
entry's parent directory is resolved again in the root, so a symlink the archive itself
creates cannot lead a later entry out either. Modes are kept; ownership from the archive
with ``copy_uid_gid`` (docker's ``-a``), else the container's root (0:0).

Blocking functions: run them in worker threads.
"""

from __future__ import annotations

import ctypes
import errno
import os
import posixpath
import secrets
import stat
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import attrs

from engine.errors import Conflict, EngineError, InvalidArgument, NotFound, Unavailable
from engine.store.treetar import DIR_FLAGS, TreeWriter, open_stream_tar

_SYS_OPENAT2 = 437  # the same number on every architecture (the unified syscall table)
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_IN_ROOT = 0x10
_libc = ctypes.CDLL(None, use_errno=True)
UPLOAD_IDLE_LIMIT = 3600.0  # seconds an unfinished upload is kept
CHUNK = 256 * 1024
_EAGAIN_RETRIES = 1000


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


def open_in_root(root_fd: int, path: str, flags: int, *, follow: bool = True) -> int:
    """Open ``path`` as if ``root_fd`` were ``/``; ``follow=False``: a symlink as the last
    component is opened itself (with ``O_PATH``), not followed."""
    rel = path.lstrip("/") or "."
    if not follow:
        flags |= os.O_NOFOLLOW
    how = _OpenHow(flags | os.O_CLOEXEC, 0, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)
    for _ in range(_EAGAIN_RETRIES):
        fd = _libc.syscall(_SYS_OPENAT2, root_fd, rel.encode(), ctypes.byref(how), ctypes.sizeof(how))
        if fd >= 0:
            return int(fd)
        err = ctypes.get_errno()
        # EAGAIN: a rename or mount anywhere on the host raced a ".." step; the kernel
        # asks the caller to try again (openat2(2))
        if err != errno.EAGAIN:
            break
    if err == errno.ENOSYS:
        raise Unavailable("copying files needs openat2 (Linux 5.6 or later)")
    raise OSError(err, os.strerror(err), path)


def _split(path: str) -> tuple[str, str]:
    """(parent, last name) of a container path; ``/`` and ``/.`` name the root itself."""
    norm = posixpath.normpath("/" + path.lstrip("/"))
    if norm == "/":
        return "/", "."
    return posixpath.dirname(norm), posixpath.basename(norm)


def _not_found(path: str, e: OSError) -> EngineError:
    if e.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
        return NotFound(f"no such file or directory in the container: {path}")
    return InvalidArgument(f"{path}: {e.strerror}")


def stat_in_root(root_fd: int, path: str, *, follow: bool) -> tuple[int, str, os.stat_result]:
    """(fd of the entry's parent directory, the entry's name there, its lstat): the
    parent resolved in the root; with ``follow`` a final symlink is resolved too."""
    try:
        if follow:
            target = open_in_root(root_fd, path, os.O_PATH)
            try:
                st = os.fstat(target)
                real = os.readlink(f"/proc/self/fd/{target}")
            finally:
                os.close(target)
            # reopen the parent of what the link resolved to, through the root again
            root_real = os.readlink(f"/proc/self/fd/{root_fd}")
            inside = "/" + os.path.relpath(real, root_real) if real != root_real else "/"
            if inside.startswith("/.."):
                raise InvalidArgument(f"{path} resolves outside the container")
            path = inside
        parent, name = _split(path)
        parent_fd = open_in_root(root_fd, parent, DIR_FLAGS & ~os.O_NOFOLLOW)
        try:
            st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
        except BaseException:
            os.close(parent_fd)
            raise
        return parent_fd, name, st
    except OSError as e:
        raise _not_found(path, e) from None


def path_stat(st: os.stat_result, name: str, link: str = "") -> dict[str, Any]:
    return {"name": name, "size": st.st_size, "mode": st.st_mode, "mtime": st.st_mtime,
            "is_dir": stat.S_ISDIR(st.st_mode), "link_target": link}


# --- out ------------------------------------------------------------------------------------------


class _ChunkSink:
    """A file-like object for tarfile: chunks of ``CHUNK`` bytes to ``emit``."""

    def __init__(self, emit: Any) -> None:
        self.emit = emit
        self.buf = bytearray()

    def write(self, data: bytes) -> int:
        self.buf += data
        while len(self.buf) >= CHUNK:
            self.emit(bytes(self.buf[:CHUNK]))
            del self.buf[:CHUNK]
        return len(data)

    def flush_all(self) -> None:
        if self.buf:
            self.emit(bytes(self.buf))
            self.buf.clear()


# Kernel filesystems mounted in a running container (statfs f_type): a copy shows their
# mount points as empty directories, as docker's does, instead of walking /proc and /sys.
KERNEL_FILESYSTEMS = frozenset({
    0x9FA0,  # proc
    0x62656572,  # sysfs
    0x1CD1,  # devpts
    0x19800202,  # mqueue
    0x27E0EB,  # cgroup
    0x63677270,  # cgroup2
    0x73636673,  # securityfs
    0x64626720,  # debugfs
    0x74726163,  # tracefs
    0xCAFE4A11,  # bpf
    0x6165676C,  # pstore
    0x62656570,  # configfs
    0xF97CFF8C,  # selinuxfs
    0x65735543,  # fusectl
    0x42494E4D,  # binfmt_misc
})


def filesystem_type(fd: int) -> int:
    buf = ctypes.create_string_buffer(256)  # struct statfs is 120 bytes on 64-bit Linux
    if _libc.fstatfs(fd, buf) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return ctypes.c_long.from_buffer(buf).value & 0xFFFFFFFF


def skip_kernel_filesystems(tar: tarfile.TarFile) -> Any:
    """A ``TreeWriter`` hook: a directory on another filesystem than its parent (a mount
    point) whose filesystem is a kernel one is archived empty."""
    from engine.store.treetar import tar_info

    def hook(parent_fd: int, name: str, st: os.stat_result, arcname: str) -> bool:
        if not stat.S_ISDIR(st.st_mode) or st.st_dev == os.fstat(parent_fd).st_dev:
            return True
        fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent_fd)
        try:
            kernel = filesystem_type(fd) in KERNEL_FILESYSTEMS
        finally:
            os.close(fd)
        if kernel:
            tar.addfile(tar_info(arcname.rstrip("/") + "/", st))
        return not kernel

    return hook


def archive_path(root_fd: int, path: str, emit: Any, *, follow: bool) -> None:
    """Write a tar of ``path`` (its top entry named after its last component; the root is
    ``.``) to ``emit(chunk)``, which may block (backpressure)."""
    parent_fd, name, st = stat_in_root(root_fd, path, follow=follow)
    try:
        sink = _ChunkSink(emit)
        tar = open_stream_tar(sink)
        writer = TreeWriter(tar, skip_kernel_filesystems(tar))
        arcname = _split(path)[1]  # a followed link keeps its own name, as docker's -L
        if path.endswith("/."):
            arcname = "./"  # docker's "copy the contents": entries ./, ./f (the CLI renames them to DEST)
        if stat.S_ISDIR(st.st_mode):
            fd = os.open(name, DIR_FLAGS, dir_fd=parent_fd)
            try:
                writer.tar.addfile(_dir_info(arcname, st))
                writer.add_dir_fd(fd, arcname, st, include_self=False)
            finally:
                os.close(fd)
        else:
            writer.add_leaf(parent_fd, name, arcname, st)
        tar.close()
        sink.flush_all()
    except PermissionError as e:  # a file the kernel will not let even root read (/proc)
        raise InvalidArgument(f"cannot copy {path}: {e.filename or name}: {e.strerror}") from e
    finally:
        os.close(parent_fd)


def _dir_info(arcname: str, st: os.stat_result) -> tarfile.TarInfo:
    from engine.store.treetar import tar_info

    return tar_info(arcname.rstrip("/") + "/", st)


def export_root(root_fd: int, emit: Any) -> None:
    """docker export: the whole filesystem, entries named without a leading ``/``."""
    sink = _ChunkSink(emit)
    tar = open_stream_tar(sink)
    fd = os.open(".", DIR_FLAGS & ~os.O_NOFOLLOW, dir_fd=root_fd)
    try:
        TreeWriter(tar).add_dir_fd(fd, "", include_self=False)
    finally:
        os.close(fd)
    tar.close()
    sink.flush_all()


def describe_path(root_fd: int, path: str, *, follow: bool) -> dict[str, Any]:
    parent_fd, name, st = stat_in_root(root_fd, path, follow=follow)
    try:
        link = os.readlink(name, dir_fd=parent_fd) if stat.S_ISLNK(st.st_mode) else ""
    finally:
        os.close(parent_fd)
    return path_stat(st, _split(path)[1], link)


# --- in -------------------------------------------------------------------------------------------


ROOTFS_READ_ONLY = "container rootfs is marked read-only"  # dockerd's words (and its 500)
VOLUME_READ_ONLY = "mounted volume is marked read-only"


def _within(path: str, directory: str) -> bool:
    directory = posixpath.normpath("/" + directory.lstrip("/"))  # not "//x": POSIX keeps two slashes
    return directory == "/" or path == directory or path.startswith(directory + "/")


@attrs.frozen
class WriteCheck:
    """dockerd's rule for a copy into a container, running or not: a destination inside a
    volume or bind goes by that mount's mode, any other by the root filesystem's
    (``--read-only``). Without it a stopped read-only container's layer, writable on the
    host, would take the files. Tmpfs mounts count as the root, as dockerd counts them."""

    read_only_root: bool = False
    mounts: tuple[tuple[str, bool], ...] = ()  # (destination, read-only)

    @classmethod
    def of(cls, config: Any) -> WriteCheck:
        mounts = [(m.destination, m.read_only) for m in (*config.volumes, *config.binds)]
        return cls(bool(config.read_only), tuple(mounts))

    def check(self, directory: str) -> None:
        """Refuse a copy into ``directory`` (resolved inside the container) as dockerd does."""
        inside = [(len(dest), ro) for dest, ro in self.mounts if _within(directory, dest)]
        if inside:
            if max(inside)[1]:  # the innermost mount decides
                raise Conflict(VOLUME_READ_ONLY, http_status=500)
            return
        if self.read_only_root:
            raise Conflict(ROOTFS_READ_ONLY, http_status=500)


EXTRACTION_NOT_A_DIRECTORY = "extraction point is not a directory"


@attrs.frozen
class CopyInResult:
    entries: int
    bytes: int


def extract_into(root_fd: int, dest: str, archive: IO[bytes], *, copy_uid_gid: bool,
                 check: WriteCheck | None = None, into_dir_only: bool = False) -> CopyInResult:
    """docker's cp into a container. ``dest`` an existing directory: the archive goes into
    it. ``dest`` missing (its parent existing) or an existing non-directory: the archive's
    single top entry lands there, renamed. Symlinks in ``dest`` resolve inside the root;
    ``check`` may refuse the directory they lead to. ``into_dir_only``: the Docker API's
    ``PUT …/archive``, whose clients rename the entries themselves: ``dest`` must be an
    existing directory (dockerd's missing-path error carries ``missing_path``)."""
    try:
        dest_fd = open_in_root(root_fd, dest, os.O_PATH)
        is_dir = stat.S_ISDIR(os.fstat(dest_fd).st_mode)
        os.close(dest_fd)
    except OSError as e:
        if into_dir_only and e.errno == errno.ENOENT:
            raise NotFound(f"no such file or directory in the container: {dest}", missing_path=dest) from None
        if into_dir_only and e.errno == errno.ENOTDIR:  # dockerd's status; its words but the host path
            raise InvalidArgument(f"lstat {dest}: not a directory", http_status=500) from None
        if e.errno != errno.ENOENT:
            raise _not_found(dest, e) from None
        is_dir = None
    if into_dir_only and not is_dir:
        raise InvalidArgument(EXTRACTION_NOT_A_DIRECTORY, http_status=500)  # dockerd's words and status
    rename: tuple[str, str] | None = None  # (the archive's top name, the new name)
    base = dest
    if is_dir is not True:
        if dest.endswith("/"):
            raise NotFound(f"no such directory in the container: {dest}")
        base, new_name = _split(dest)
        rename = ("", new_name)
    try:
        base_fd = open_in_root(root_fd, base, DIR_FLAGS & ~os.O_NOFOLLOW)
    except OSError as e:
        raise _not_found(base, e) from None
    count = total = 0
    try:
        base_rel = os.readlink(f"/proc/self/fd/{base_fd}")
        root_real = os.readlink(f"/proc/self/fd/{root_fd}")
        base_inside = "/" + os.path.relpath(base_rel, root_real) if base_rel != root_real else "/"
        if check is not None:
            check.check(base_inside)
        dirs: list[tuple[str, tarfile.TarInfo]] = []
        with tarfile.open(fileobj=archive, mode="r|*") as tar:
            for member in tar:
                name = _clean_name(member.name)
                if name is None:
                    continue
                if rename is not None:
                    top, _, rest = name.partition("/")
                    if rename[0] == "":
                        rename = (top, rename[1])
                    if top != rename[0]:
                        raise InvalidArgument(
                            f"copying to {dest}: the archive holds more than one top-level entry; "
                            "copy into a directory instead")
                    name = rename[1] + ("/" + rest if rest else "")
                target = posixpath.join(base_inside, name)
                _extract_one(root_fd, target, member, tar, copy_uid_gid=copy_uid_gid)
                if member.isdir():
                    dirs.append((target, member))
                count += 1
                total += member.size if member.isreg() else 0
        for target, member in reversed(dirs):  # after their contents changed them
            _set_times(root_fd, target, member)
    except tarfile.TarError as e:
        raise InvalidArgument(f"not a valid tar archive: {e}") from None
    except OSError as e:
        if e.errno == errno.EROFS:  # docker refuses these too ("marked read-only")
            raise Conflict(f"cannot copy to {dest}: it is on a read-only mount (a read-only volume, "
                           "bind or root filesystem)") from None
        raise
    finally:
        os.close(base_fd)
    return CopyInResult(count, total)


def _clean_name(name: str) -> str | None:
    norm = posixpath.normpath("/" + name.lstrip("/")).lstrip("/")
    return norm or None


def _extract_one(root_fd: int, target: str, member: tarfile.TarInfo, tar: tarfile.TarFile,
                 *, copy_uid_gid: bool) -> None:
    parent, name = _split(target)
    if name == ".":
        return
    try:
        parent_fd = _open_parent(root_fd, parent)
    except OSError as e:
        raise _not_found(parent, e) from None
    try:
        existing = _lstat(parent_fd, name)
        if member.isdir():
            if existing is not None and not stat.S_ISDIR(existing.st_mode):
                raise Conflict(f"cannot overwrite non-directory {target} with a directory")
            if existing is None:
                os.mkdir(name, 0o700, dir_fd=parent_fd)
        else:
            if existing is not None:
                if stat.S_ISDIR(existing.st_mode):
                    raise Conflict(f"cannot overwrite directory {target} with a non-directory")
                os.unlink(name, dir_fd=parent_fd)
            _create(root_fd, parent_fd, name, member, tar)
        uid, gid = (member.uid, member.gid) if copy_uid_gid else (0, 0)
        os.chown(name, uid, gid, dir_fd=parent_fd, follow_symlinks=False)
        if not member.issym():  # after chown, which clears setuid bits
            _chmod_nofollow(parent_fd, name, member.mode & 0o7777)
        if not member.isdir():
            os.utime(name, (member.mtime, member.mtime), dir_fd=parent_fd, follow_symlinks=False)
    finally:
        os.close(parent_fd)


def _open_parent(root_fd: int, parent: str) -> int:
    """The member's parent directory, made when missing as docker's Unpack makes it (0755,
    root's): an archive may name ``/dir/file`` without a ``/dir`` entry (testcontainers'
    copies into a container do). Each level resolves inside the root."""
    try:
        return open_in_root(root_fd, parent, DIR_FLAGS & ~os.O_NOFOLLOW)
    except FileNotFoundError:
        if parent == "/":
            raise
    above, name = _split(parent)
    above_fd = _open_parent(root_fd, above)
    try:
        try:
            os.mkdir(name, 0o755, dir_fd=above_fd)
        except FileExistsError:
            pass  # a dangling symlink, or made meanwhile: the open below says which
        else:
            _chmod_nofollow(above_fd, name, 0o755)  # whatever the daemon's umask
    finally:
        os.close(above_fd)
    return open_in_root(root_fd, parent, DIR_FLAGS & ~os.O_NOFOLLOW)


def _chmod_nofollow(parent_fd: int, name: str, mode: int) -> None:
    # no fchmodat(AT_SYMLINK_NOFOLLOW) on Linux: through an fd of the entry itself
    fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent_fd)
    try:
        os.chmod(f"/proc/self/fd/{fd}", mode)
    finally:
        os.close(fd)


def _lstat(parent_fd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _create(root_fd: int, parent_fd: int, name: str, member: tarfile.TarInfo, tar: tarfile.TarFile) -> None:
    if member.isreg():
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                     dir_fd=parent_fd)
        with os.fdopen(fd, "wb") as out:
            source = tar.extractfile(member)
            if source is not None:
                while chunk := source.read(CHUNK):
                    out.write(chunk)
    elif member.issym():
        os.symlink(member.linkname, name, dir_fd=parent_fd)
    elif member.islnk():
        link = _clean_name(member.linkname)
        if link is None:
            raise InvalidArgument(f"hard link {member.name} has no target")
        link_parent, link_name = _split(link)
        try:
            src_fd = open_in_root(root_fd, link_parent, DIR_FLAGS & ~os.O_NOFOLLOW)
        except OSError as e:
            raise _not_found(link, e) from None
        try:
            os.link(link_name, name, src_dir_fd=src_fd, dst_dir_fd=parent_fd, follow_symlinks=False)
        finally:
            os.close(src_fd)
    elif member.ischr() or member.isblk() or member.isfifo():
        kind = stat.S_IFCHR if member.ischr() else stat.S_IFBLK if member.isblk() else stat.S_IFIFO
        os.mknod(name, kind | 0o600, os.makedev(member.devmajor, member.devminor), dir_fd=parent_fd)
    else:
        raise InvalidArgument(f"cannot copy {member.name}: unsupported tar entry type {member.type!r}")


def _set_times(root_fd: int, target: str, member: tarfile.TarInfo) -> None:
    parent, name = _split(target)
    try:
        parent_fd = open_in_root(root_fd, parent, DIR_FLAGS & ~os.O_NOFOLLOW)
    except OSError:
        return
    try:
        os.utime(name, (member.mtime, member.mtime), dir_fd=parent_fd, follow_symlinks=False)
    except OSError:
        pass
    finally:
        os.close(parent_fd)


# --- uploads --------------------------------------------------------------------------------------


class Uploads:
    """Archives clients send in chunks before ``copy_to`` extracts them (0600 files under
    the daemon's root; an upload left unfinished for ``UPLOAD_IDLE_LIMIT`` is deleted)."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory

    def begin(self) -> str:
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._expire()
        token = secrets.token_hex(16)
        fd = os.open(self.dir / token, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        os.close(fd)
        return token

    def path(self, token: str) -> Path:
        if len(token) != 32 or not all(ch in "0123456789abcdef" for ch in token):
            raise InvalidArgument(f"invalid upload id {token!r}")
        path = self.dir / token
        if not path.exists():
            raise NotFound(f"no such upload {token} (finished, or idle for too long)")
        return path

    def append(self, token: str, data: bytes) -> int:
        path = self.path(token)
        with open(path, "ab") as f:
            f.write(data)
            return f.tell()

    def discard(self, token: str) -> None:
        self.path(token).unlink(missing_ok=True)

    def _expire(self) -> None:
        now = time.time()
        for entry in self.dir.iterdir():
            try:
                if now - entry.stat().st_mtime > UPLOAD_IDLE_LIMIT:
                    entry.unlink()
            except OSError:
                continue


def iter_file(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            yield chunk
