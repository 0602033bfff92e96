"""Safe layer unpacking: a layer blob (gzip, zstd or plain tar) into a directory.

Blocking and synchronous: the driver runs it in a worker thread.

Safety model. Every filesystem operation is made relative to an open directory fd that was
reached from the extraction root one component at a time with ``O_NOFOLLOW``, so nothing the
layer creates (a symlink, however it points) can redirect a later write outside the root:

* Entry names are normalised the way docker does for absolute names: leading ``/`` and
  ``./`` are stripped, so ``/etc/passwd`` means ``<root>/etc/passwd``. Unlike docker (whose
  ``filepath.Clean`` silently clamps ``/a/../../x`` to ``/x``), any ``..`` that climbs above
  the root at any point is refused: such a name only appears in hostile or broken tars.
* A parent component that is a symlink inside the layer is refused (tars made from a real
  filesystem never contain ``link/child``; hostile ones do to write through the link).
* Hard-link targets follow the same name rules and are linked without following symlinks.
* Symlinks themselves may point anywhere: they are resolved inside the container.
* Device nodes and FIFOs are created as the tar says (image layers do carry them; we run as
  root). Whatever is already at an entry's name is replaced (a later entry wins), except that
  a directory entry over an existing directory only updates its metadata.
* ``trusted.overlay.*`` xattrs from the tar are dropped; only OCI whiteouts produce overlay
  metadata (a layer must not forge redirects or opaque markers).

OCI whiteouts become overlay whiteouts: ``.wh.NAME`` -> char device 0:0 ``NAME``;
``.wh..wh..opq`` in ``D`` -> xattr ``trusted.overlay.opaque=y`` on ``D``.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import hashlib
import io
import os
import shutil
import stat
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import attrs
import zstandard

from engine.errors import (
    DigestMismatch,
    EngineError,
    InvalidArgument,
    ResourceExhausted,
    UnsafeContent,
)

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
OPAQUE_XATTR = "trusted.overlay.opaque"
_XATTR_PAX_PREFIX = "SCHILY.xattr."
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_COPY_CHUNK = 1024 * 1024


@attrs.frozen
class UnpackResult:
    diff_id: str  # "sha256:<hex>" of the uncompressed tar
    size: int  # bytes of regular-file content written (hard links counted once)


class HashingReader(io.RawIOBase):
    """Passes reads through and hashes every byte, so the diff_id covers the whole tar."""

    def __init__(self, inner: IO[bytes]) -> None:
        super().__init__()
        self._inner = inner
        self._hash = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        data = self._inner.read(size)
        self._hash.update(data)
        return data

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def drain(self) -> None:
        """Hash whatever follows the tar's end marker: it is part of the blob's diff_id."""
        while self.read(_COPY_CHUNK):
            pass

    def digest(self) -> str:
        return "sha256:" + self._hash.hexdigest()


def detect_compression(head: bytes) -> str:
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    if head.startswith(ZSTD_MAGIC):
        return "zstd"
    return "none"


@contextlib.contextmanager
def open_decompressed(blob: Path) -> Iterator[IO[bytes]]:
    """The blob's uncompressed tar stream; compression is detected by magic bytes."""
    with open(blob, "rb") as raw:
        kind = detect_compression(raw.read(4))
        raw.seek(0)
        if kind == "gzip":
            with gzip.GzipFile(fileobj=raw, mode="rb") as stream:
                yield stream  # type: ignore[misc]
        elif kind == "zstd":
            # Layers may hold several zstd frames (e.g. written by chunked compressors).
            reader = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
            with reader:
                yield reader  # type: ignore[misc]
        else:
            yield raw


# --- names -----------------------------------------------------------------------------------


def normalise_name(name: str) -> list[str]:
    """Split an entry name into safe components (empty list = the layer root itself)."""
    parts: list[str] = []
    for comp in name.split("/"):
        if comp in ("", "."):
            continue
        if comp == "..":
            if not parts:
                raise UnsafeContent(
                    f"layer entry {name!r} climbs out of the layer root with '..'; the layer "
                    "is hostile or corrupt: do not use this image",
                    entry=name,
                )
            parts.pop()
            continue
        if "\0" in comp:
            raise UnsafeContent(f"layer entry {name!r} contains a NUL byte", entry=name)
        parts.append(comp)
    return parts


# --- directory walking -------------------------------------------------------------------------


class Extractor:
    """Applies tar members under ``root`` (an existing, empty directory we own)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root_fd = os.open(root, _DIR_FLAGS)
        self.size = 0
        # Directory mtimes are applied last: creating children would bump them again.
        self._dir_times: dict[tuple[str, ...], int] = {}

    def close(self) -> None:
        os.close(self.root_fd)

    def open_parent(self, parts: list[str], entry: str) -> int:
        """An fd for the directory holding ``parts[-1]``, creating missing parents (0755)."""
        fd = os.dup(self.root_fd)
        try:
            for comp in parts[:-1]:
                fd = self._step(fd, comp, entry)
            return fd
        except BaseException:
            os.close(fd)
            raise

    def _step(self, fd: int, comp: str, entry: str) -> int:
        """Open directory ``comp`` under ``fd`` without following links; closes ``fd`` only
        on success (the caller closes it on error)."""
        try:
            child = os.open(comp, _DIR_FLAGS, dir_fd=fd)
        except FileNotFoundError:
            os.mkdir(comp, 0o755, dir_fd=fd)
            os.chmod(comp, 0o755, dir_fd=fd)  # the process umask must not narrow it
            child = os.open(comp, _DIR_FLAGS, dir_fd=fd)
        except OSError as e:
            if e.errno not in (errno.ELOOP, errno.ENOTDIR):
                raise
            raise UnsafeContent(
                f"layer entry {entry!r} is written through {comp!r}, which is not a real "
                "directory in this layer (a symlink or a file); refusing to follow it: the "
                "layer is hostile or corrupt",
                entry=entry,
            ) from None
        os.close(fd)
        return child

    # --- members -----------------------------------------------------------------------------

    def apply(self, member: tarfile.TarInfo, tar: tarfile.TarFile) -> None:
        parts = normalise_name(member.name)
        if not parts:
            self._apply_root(member)
            return
        base = parts[-1]
        if base == OPAQUE_MARKER:
            self._opaque(parts, member.name)
            return
        if base.startswith(WHITEOUT_PREFIX + WHITEOUT_PREFIX):
            return  # other aufs metadata (.wh..wh.plnk, .wh..wh.aufs): meaningless here
        if base.startswith(WHITEOUT_PREFIX):
            hidden = base[len(WHITEOUT_PREFIX) :]
            if hidden in ("", ".", ".."):
                raise UnsafeContent(f"layer entry {member.name!r} is an invalid whiteout")
            self._whiteout([*parts[:-1], hidden], member.name)
            return
        parent = self.open_parent(parts, member.name)
        try:
            self._create(parent, base, parts, member, tar)
        finally:
            os.close(parent)

    def _apply_root(self, member: tarfile.TarInfo) -> None:
        if not member.isdir():
            raise UnsafeContent(
                f"layer entry {member.name!r} names the layer root but is not a directory"
            )
        self._set_dir_meta(self.root_fd, member)
        self._dir_times[()] = _mtime_ns(member)

    def _opaque(self, parts: list[str], entry: str) -> None:
        dir_parts = parts[:-1]
        fd = self.open_parent([*dir_parts, "_"], entry)  # the directory itself
        try:
            os.setxattr(fd, OPAQUE_XATTR, b"y")
        finally:
            os.close(fd)

    def _whiteout(self, parts: list[str], entry: str) -> None:
        parent = self.open_parent(parts, entry)
        try:
            _remove_existing(parent, parts[-1])
            os.mknod(parts[-1], stat.S_IFCHR | 0o000, os.makedev(0, 0), dir_fd=parent)
        finally:
            os.close(parent)

    def _create(
        self,
        parent: int,
        base: str,
        parts: list[str],
        member: tarfile.TarInfo,
        tar: tarfile.TarFile,
    ) -> None:
        if member.isdir():
            self._directory(parent, base, parts, member)
            return
        _remove_existing(parent, base)  # a repeated entry: the later one wins
        if member.isreg():
            self._regular(parent, base, member, tar)
        elif member.issym():
            os.symlink(member.linkname, base, dir_fd=parent)
            self._set_link_meta(parent, base, member)
        elif member.islnk():
            self._hardlink(parent, base, member)
        elif member.ischr() or member.isblk() or member.isfifo():
            self._special(parent, base, member)
        else:
            raise UnsafeContent(
                f"layer entry {member.name!r} has an unsupported tar type {member.type!r}",
                entry=member.name,
            )

    def _directory(self, parent: int, base: str, parts: list[str], member: tarfile.TarInfo) -> None:
        try:
            st = os.stat(base, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            st = None
        if st is not None and not stat.S_ISDIR(st.st_mode):
            _remove_existing(parent, base)
            st = None
        if st is None:
            os.mkdir(base, 0o700, dir_fd=parent)
        fd = os.open(base, _DIR_FLAGS, dir_fd=parent)
        try:
            self._set_dir_meta(fd, member)
        finally:
            os.close(fd)
        self._dir_times[tuple(parts)] = _mtime_ns(member)

    def _set_dir_meta(self, fd: int, member: tarfile.TarInfo) -> None:
        os.fchown(fd, member.uid, member.gid)
        os.fchmod(fd, member.mode & 0o7777)
        _set_xattrs_fd(fd, member)

    def _regular(
        self, parent: int, base: str, member: tarfile.TarInfo, tar: tarfile.TarFile
    ) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(base, flags, 0o600, dir_fd=parent)
        try:
            source = tar.extractfile(member)
            if source is not None:
                while chunk := source.read(_COPY_CHUNK):
                    _write_all(fd, chunk)
            # Order matters: chown clears setuid bits and file capabilities, and a write
            # clears capabilities too, so ownership, then mode, then xattrs, then times.
            os.fchown(fd, member.uid, member.gid)
            os.fchmod(fd, member.mode & 0o7777)
            _set_xattrs_fd(fd, member)
            ns = _mtime_ns(member)
            os.utime(fd, ns=(ns, ns))
        finally:
            os.close(fd)
        self.size += member.size

    def _hardlink(self, parent: int, base: str, member: tarfile.TarInfo) -> None:
        target = normalise_name(member.linkname)
        if not target:
            raise UnsafeContent(
                f"layer entry {member.name!r} hard-links to the layer root", entry=member.name
            )
        target_parent = self.open_parent(target, member.name)
        try:
            os.link(
                target[-1], base, src_dir_fd=target_parent, dst_dir_fd=parent, follow_symlinks=False
            )
        except FileNotFoundError:
            raise InvalidArgument(
                f"layer entry {member.name!r} hard-links to {member.linkname!r}, which is not "
                "earlier in the same layer; the layer is corrupt",
                entry=member.name,
            ) from None
        finally:
            os.close(target_parent)

    def _special(self, parent: int, base: str, member: tarfile.TarInfo) -> None:
        if member.isfifo():
            os.mkfifo(base, 0o600, dir_fd=parent)
        else:
            kind = stat.S_IFCHR if member.ischr() else stat.S_IFBLK
            os.mknod(
                base, kind | 0o600, os.makedev(member.devmajor, member.devminor), dir_fd=parent
            )
        self._set_link_meta(parent, base, member)
        # We just created this node and nobody else writes in our temp tree, so following
        # the name for chmod (there is no lchmod on Linux) reaches that node.
        os.chmod(base, member.mode & 0o7777, dir_fd=parent)

    def _set_link_meta(self, parent: int, base: str, member: tarfile.TarInfo) -> None:
        os.chown(base, member.uid, member.gid, dir_fd=parent, follow_symlinks=False)
        xattrs = _xattrs(member)
        if xattrs:
            # No dir_fd form of lsetxattr: go through the parent's /proc fd magic link.
            path = f"/proc/self/fd/{parent}/{base}"
            for key, value in xattrs.items():
                os.setxattr(path, key, value, follow_symlinks=False)
        ns = _mtime_ns(member)
        os.utime(base, ns=(ns, ns), dir_fd=parent, follow_symlinks=False)

    def finish(self) -> None:
        """Apply directory mtimes, deepest first, now that no more children will appear."""
        for parts in sorted(self._dir_times, key=len, reverse=True):
            ns = self._dir_times[parts]
            fd = self._open_existing_dir(parts)
            if fd is None:
                continue  # replaced or whited out by a later entry: its time is moot
            try:
                os.utime(fd, ns=(ns, ns))
            finally:
                os.close(fd)

    def _open_existing_dir(self, parts: tuple[str, ...]) -> int | None:
        fd = os.dup(self.root_fd)
        for comp in parts:
            try:
                child = os.open(comp, _DIR_FLAGS, dir_fd=fd)
            except OSError:
                os.close(fd)
                return None
            os.close(fd)
            fd = child
        return fd


def _remove_existing(parent: int, name: str) -> None:
    try:
        st = os.stat(name, dir_fd=parent, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(name, dir_fd=parent)
    else:
        os.unlink(name, dir_fd=parent)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _mtime_ns(member: tarfile.TarInfo) -> int:
    return int(float(member.mtime) * 1_000_000_000)


def _xattrs(member: tarfile.TarInfo) -> dict[str, bytes]:
    found: dict[str, bytes] = {}
    for key, value in member.pax_headers.items():
        if not key.startswith(_XATTR_PAX_PREFIX):
            continue
        name = key[len(_XATTR_PAX_PREFIX) :]
        if name.startswith("trusted.overlay."):
            continue  # only whiteouts may create overlay metadata
        # tarfile decodes pax values with surrogateescape; this restores the raw bytes.
        found[name] = value.encode("utf-8", "surrogateescape")
    return found


def _set_xattrs_fd(fd: int, member: tarfile.TarInfo) -> None:
    for key, value in _xattrs(member).items():
        os.setxattr(fd, key, value)


# --- the whole layer ---------------------------------------------------------------------------


def extract(
    blob: Path, target: Path, *, check_cancelled: Callable[[], None] = lambda: None
) -> UnpackResult:
    """Extract ``blob`` into the existing empty directory ``target``; return its diff_id.

    ``check_cancelled`` is polled between entries (the driver passes
    ``trio.from_thread.check_cancelled``). The caller owns ``target`` and deletes it on error.
    """
    try:
        with open_decompressed(blob) as stream:
            hashing = HashingReader(stream)
            extractor = Extractor(target)
            try:
                _extract_members(hashing, extractor, check_cancelled)
                extractor.finish()
            finally:
                extractor.close()
            hashing.drain()
    except (tarfile.TarError, EOFError, zstandard.ZstdError, gzip.BadGzipFile) as e:
        raise InvalidArgument(
            f"layer blob {blob} is not a valid (gzip/zstd) tar archive: {e}; delete the blob "
            "and pull the image again"
        ) from e
    except OSError as e:
        raise _os_error(blob, e) from e
    return UnpackResult(diff_id=hashing.digest(), size=extractor.size)


def _extract_members(
    stream: HashingReader, extractor: Extractor, check_cancelled: Callable[[], None]
) -> None:
    with tarfile.open(fileobj=stream, mode="r|") as tar:
        while (member := tar.next()) is not None:
            check_cancelled()
            try:
                extractor.apply(member, tar)
            except EngineError:
                raise
            except OSError as e:
                e.filename = e.filename or member.name
                raise
            tar.members = []  # type: ignore[attr-defined]  # streaming: flat memory


def _os_error(blob: Path, e: OSError) -> EngineError:
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return ResourceExhausted(f"no space left while unpacking layer {blob}: free disk space")
    return InvalidArgument(f"unpacking layer {blob} failed: {e}")


TEMP_PREFIX = ".unpack-"


def unpack_into(
    blob: Path,
    parent: Path,
    *,
    expected_diff_id: str | None,
    check_cancelled: Callable[[], None] = lambda: None,
) -> tuple[Path, UnpackResult]:
    """Extract ``blob`` into ``<parent>/.unpack-XXXX/diff`` and check its diff_id.

    Returns the temp dir and the result. The temp dir sits in ``parent`` (the layers dir) so
    renaming it into place is atomic. On any failure, including a digest mismatch or
    cancellation, the temp dir is deleted. Renaming is the caller's step, since the final
    name depends on the diff_id.
    """
    temp = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX, dir=parent))
    try:
        diff = temp / "diff"
        diff.mkdir()
        diff.chmod(0o755)
        result = extract(blob, diff, check_cancelled=check_cancelled)
        if expected_diff_id is not None and result.diff_id != expected_diff_id:
            raise DigestMismatch(
                f"layer blob {blob} unpacks to {result.diff_id}, but the image config says "
                f"{expected_diff_id}; the blob is corrupt or the image is wrong: delete the "
                "blob and pull again",
                expected=expected_diff_id,
                actual=result.diff_id,
            )
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    return temp, result
