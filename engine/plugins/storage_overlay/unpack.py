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
import functools
import hashlib
import io
import math
import os
import stat
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import attrs

from engine.compression import decompress_errors, decompressed
from engine.errors import (
    DigestMismatch,
    EngineError,
    InvalidArgument,
    ResourceExhausted,
    UnsafeContent,
)
from engine.store.rmtree import remove_at, remove_tree

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
OPAQUE_XATTR = "trusted.overlay.opaque"
_XATTR_PAX_PREFIX = "SCHILY.xattr."
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_CHUNK = 1024 * 1024  # big reads: per-call costs stay small next to the bytes


@attrs.frozen
class UnpackResult:
    diff_id: str  # "sha256:<hex>" of the uncompressed tar
    size: int  # bytes of regular-file content written (hard links counted once)


class ChunkReader(io.RawIOBase):
    """A raw stream over ``next_chunk`` (returns the next bytes, ``b""`` at the end): a blob
    file read in big pieces, or a layer arriving from the network while it downloads.

    ``read_direct(buffer)``, when given, reads the next bytes straight into the reader's
    buffer if they come from a file (the decompressor's buffer: no copy in between, and
    none made while holding the GIL); it returns 0 or None when they do not."""

    def __init__(
        self,
        next_chunk: Callable[[], bytes],
        read_direct: Callable[[Any], int | None] | None = None,
    ) -> None:
        super().__init__()
        self._next_chunk = next_chunk
        self._read_direct = read_direct
        self._data = b""
        self._pos = 0
        self._eof = False

    def readable(self) -> bool:
        return True

    def _available(self) -> int:
        """Bytes buffered, fetching the next chunk when none are (0 at the end)."""
        while self._pos == len(self._data) and not self._eof:
            self._data, self._pos = self._next_chunk(), 0
            self._eof = not self._data
        return len(self._data) - self._pos

    def readinto(self, buffer: Any) -> int:
        if self._read_direct is not None and self._pos == len(self._data) and not self._eof:
            n = self._read_direct(buffer)
            if n:
                return n
        n = min(len(buffer), self._available())
        buffer[:n] = memoryview(self._data)[self._pos : self._pos + n]
        self._pos += n
        return n

    def read(self, size: int = -1) -> bytes:
        available = self._available()
        if size < 0 or size >= available:
            # The common case hands the chunk on without copying it.
            data = self._data if self._pos == 0 else self._data[self._pos :]
            self._pos = len(self._data)
            return data
        data = self._data[self._pos : self._pos + size]
        self._pos += size
        return data

    def peek(self, size: int) -> bytes:
        """The next ``size`` bytes (fewer at the end) without consuming them."""
        while len(self._data) - self._pos < size and not self._eof:
            more = self._next_chunk()
            self._eof = not more
            self._data, self._pos = self._data[self._pos :] + more, 0
        return self._data[self._pos : self._pos + size]


class TarStream:
    """The uncompressed tar as ``tarfile`` reads it, hashed on the way (the diff_id covers
    every byte, including anything after the end marker).

    Forward-only: ``seek`` may skip ahead (member data nobody reads) but not go back past the
    current chunk. Regular-file data is written straight from the decompressor's chunks to
    the target file (``copy_to``), with no per-block copies in between."""

    def __init__(self, source: IO[bytes]) -> None:
        self._source = source
        self._hash = hashlib.sha256()
        self._buf = b""
        self._view = memoryview(self._buf)
        self._i = 0  # read position in _buf
        self._base = 0  # stream offset of _buf[0]

    def _fill(self) -> bool:
        chunk = self._source.read(_READ_CHUNK)
        if not chunk:
            return False
        self._hash.update(chunk)
        self._base += len(self._buf)
        self._buf, self._view, self._i = chunk, memoryview(chunk), 0
        return True

    def tell(self) -> int:
        return self._base + self._i

    def read(self, size: int = -1) -> bytes:
        parts: list[bytes] = []
        wanted = size if size >= 0 else 1 << 62
        while wanted > 0:
            available = len(self._buf) - self._i
            if available == 0:
                if not self._fill():
                    break
                continue
            take = min(available, wanted)
            parts.append(self._buf[self._i : self._i + take])
            self._i += take
            wanted -= take
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_CUR:
            offset += self.tell()
        elif whence != io.SEEK_SET:
            raise io.UnsupportedOperation("a layer stream can only seek from its start")
        if offset < self._base:
            raise io.UnsupportedOperation("a layer stream cannot seek backwards")
        while offset > self._base + len(self._buf):
            if not self._fill():
                self._i = len(self._buf)  # past the end: later reads return nothing
                return self.tell()
        self._i = offset - self._base
        return offset

    def copy_to(self, fd: int, size: int) -> None:
        """Write the next ``size`` bytes to ``fd``."""
        while size > 0:
            available = len(self._buf) - self._i
            if available == 0:
                if not self._fill():
                    raise tarfile.ReadError("unexpected end of data inside a file's content")
                continue
            take = min(available, size)
            _write_all(fd, self._view[self._i : self._i + take])
            self._i += take
            size -= take

    def drain(self) -> None:
        """Hash whatever follows the tar's end marker: it is part of the blob's diff_id."""
        self._i = len(self._buf)
        while self._fill():
            self._i = len(self._buf)

    def digest(self) -> str:
        return "sha256:" + self._hash.hexdigest()


class MemberData:
    """How ``Extractor`` gets at a member's content, straight from the stream: a sparse
    member's data regions are written at their offsets and its holes stay holes."""

    def __init__(self, tar: tarfile.TarFile, stream: TarStream) -> None:
        self.tar = tar
        self.stream = stream

    def copy_to(self, member: tarfile.TarInfo, fd: int) -> None:
        if member.sparse is None:
            self.stream.seek(member.offset_data)
            self.stream.copy_to(fd, member.size)
            return
        # The regions' bytes are stored one after the other (GNU and PAX sparse formats
        # alike, as tarfile parses them); seek over the holes, then set the real size.
        stored = member.offset_data
        for offset, length in _sparse_map(member):
            self.stream.seek(stored)
            os.lseek(fd, offset, os.SEEK_SET)
            self.stream.copy_to(fd, length)
            stored += length
        os.ftruncate(fd, member.size)


def _sparse_map(member: tarfile.TarInfo) -> list[tuple[int, int]]:
    raw: Any = member.sparse or []  # [(offset, length), ...] as tarfile parses it
    regions = [(int(offset), int(length)) for offset, length in raw]
    for offset, length in regions:
        if offset < 0 or length < 0 or offset + length > member.size:
            raise UnsafeContent(
                f"layer entry {member.name!r} has a sparse region ({offset}, {length}) outside "
                f"its size {member.size}; the layer is corrupt",
                entry=member.name,
            )
    return regions


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


# uid/gid are 32-bit on Linux and (2**32 - 1) means "unchanged" to chown(2).
_MAX_ID = 2**32 - 2
# Nanoseconds since the epoch must fit a signed 64-bit value (about the years 1678-2262).
_MAX_MTIME = (2**63 - 1) // 1_000_000_000


def check_fields(member: tarfile.TarInfo) -> None:
    """Refuse numeric fields the kernel cannot take (pax headers may say anything: a NaN or
    1e400 mtime, a 2**40 uid) with an error that names the entry, not an internal error."""
    problems = []
    for field in ("uid", "gid"):
        value = getattr(member, field)
        if not isinstance(value, int) or not 0 <= value <= _MAX_ID:
            problems.append(f"{field} {value!r} (must be 0-{_MAX_ID})")
    mtime = member.mtime
    try:
        ok = math.isfinite(mtime) and abs(mtime) <= _MAX_MTIME
    except TypeError:
        ok = False
    if not ok:
        problems.append(f"mtime {mtime!r} (must be a finite time within +/-{_MAX_MTIME} s)")
    if member.size < 0:
        problems.append(f"size {member.size!r}")
    if member.ischr() or member.isblk():
        for field in ("devmajor", "devminor"):
            value = getattr(member, field)
            if not isinstance(value, int) or not 0 <= value <= 2**32 - 1:
                problems.append(f"{field} {value!r}")
    if problems:
        raise UnsafeContent(
            f"layer entry {member.name!r} has an invalid {', '.join(problems)}; the layer is "
            "corrupt or hostile: do not use this image",
            entry=member.name,
        )


# --- directory walking -------------------------------------------------------------------------


class Extractor:
    """Applies tar members under ``root`` (an existing, empty directory we own)."""

    def __init__(self, root: Path, *, max_apparent_size: int | None = None) -> None:
        self.root = root
        self.root_fd = os.open(root, _DIR_FLAGS)
        self.size = 0  # apparent bytes of regular files (a sparse file's holes count)
        self.max_apparent_size = max_apparent_size
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

    def apply(self, member: tarfile.TarInfo, data: MemberData) -> None:
        check_fields(member)
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
            self._create(parent, base, parts, member, data)
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
        data: MemberData,
    ) -> None:
        if member.isdir():
            self._directory(parent, base, parts, member)
            return
        _remove_existing(parent, base)  # a repeated entry: the later one wins
        if member.isreg():
            self._regular(parent, base, member, data)
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

    def _regular(self, parent: int, base: str, member: tarfile.TarInfo, data: MemberData) -> None:
        limit = self.max_apparent_size
        if limit is not None and self.size + member.size > limit:
            raise ResourceExhausted(
                f"layer entry {member.name!r} takes the layer's files to "
                f"{self.size + member.size} bytes (counting sparse files at their full size), "
                f"over the limit of {limit}; if the image is trusted, raise the overlay "
                "storage option max_apparent_size (plugins.overlay in daemon.json)",
                entry=member.name,
                limit=limit,
            )
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(base, flags, 0o600, dir_fd=parent)
        try:
            data.copy_to(member, fd)
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
        remove_at(parent, name)
    else:
        os.unlink(name, dir_fd=parent)


def _write_all(fd: int, data: bytes | memoryview) -> None:
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
    blob: Path,
    target: Path,
    *,
    check_cancelled: Callable[[], None] = lambda: None,
    max_apparent_size: int | None = None,
) -> UnpackResult:
    """Extract ``blob`` into the existing empty directory ``target``; return its diff_id.

    ``check_cancelled`` is polled between entries (the driver passes
    ``trio.from_thread.check_cancelled``). The caller owns ``target`` and deletes it on error.
    """
    with open(blob, "rb", buffering=0) as raw:
        source = ChunkReader(lambda: raw.read(_READ_CHUNK), raw.readinto)
        return extract_stream(
            source,
            target,
            check_cancelled=check_cancelled,
            what=str(blob),
            max_apparent_size=max_apparent_size,
        )


def extract_stream(
    source: ChunkReader,
    target: Path,
    *,
    check_cancelled: Callable[[], None] = lambda: None,
    what: str = "layer",
    max_apparent_size: int | None = None,
) -> UnpackResult:
    """Extract the (compressed) layer read from ``source`` into ``target``, as ``extract``.

    ``max_apparent_size`` caps the total size of the layer's regular files, sparse files
    counted at their full size (ResourceExhausted beyond it).
    Errors raised by ``source`` itself (cancellation, a restarted download) pass through."""
    try:
        with decompressed(source) as stream:
            tar_stream = TarStream(stream)
            extractor = Extractor(target, max_apparent_size=max_apparent_size)
            try:
                _extract_members(tar_stream, extractor, check_cancelled)
                extractor.finish()
            finally:
                extractor.close()
            tar_stream.drain()
    except _not_a_layer_errors() as e:
        raise InvalidArgument(
            f"layer blob {what} is not a valid (gzip/zstd) tar archive: {e}; delete the blob "
            "and pull the image again"
        ) from e
    except OSError as e:
        raise _os_error(what, e) from e
    return UnpackResult(diff_id=tar_stream.digest(), size=extractor.size)


# decompress_errors() holds gzip.BadGzipFile, an OSError: they must be caught before OSError is.
@functools.cache
def _not_a_layer_errors() -> tuple[type[BaseException], ...]:
    return (tarfile.TarError, *decompress_errors())


def _extract_members(
    stream: TarStream, extractor: Extractor, check_cancelled: Callable[[], None]
) -> None:
    with tarfile.TarFile(fileobj=stream, mode="r") as tar:  # type: ignore[arg-type]
        data = MemberData(tar, stream)
        while (member := tar.next()) is not None:
            check_cancelled()
            try:
                extractor.apply(member, data)
            except EngineError:
                raise
            except OSError as e:
                e.filename = e.filename or member.name
                raise
            except (ValueError, OverflowError) as e:  # a value no syscall takes (NUL, range)
                raise UnsafeContent(
                    f"layer entry {member.name!r} cannot be unpacked: {e}; the layer is corrupt "
                    "or hostile: do not use this image",
                    entry=member.name,
                ) from None
            tar.members = []  # type: ignore[attr-defined]  # streaming: flat memory


def _os_error(what: str, e: OSError) -> EngineError:
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return ResourceExhausted(f"no space left while unpacking layer {what}: free disk space")
    return InvalidArgument(f"unpacking layer {what} failed: {e}")


TEMP_PREFIX = ".unpack-"


def unpack_into(
    blob: Path,
    parent: Path,
    *,
    expected_diff_id: str | None,
    check_cancelled: Callable[[], None] = lambda: None,
    max_apparent_size: int | None = None,
) -> tuple[Path, UnpackResult]:
    """Extract ``blob`` into ``<parent>/.unpack-XXXX/diff`` and check its diff_id.

    Returns the temp dir and the result. The temp dir sits in ``parent`` (the layers dir) so
    renaming it into place is atomic. On any failure, including a digest mismatch or
    cancellation, the temp dir is deleted. Renaming is the caller's step, since the final
    name depends on the diff_id.
    """
    with open(blob, "rb", buffering=0) as raw:
        source = ChunkReader(lambda: raw.read(_READ_CHUNK), raw.readinto)
        return unpack_stream_into(
            source,
            parent,
            expected_diff_id=expected_diff_id,
            check_cancelled=check_cancelled,
            what=str(blob),
            max_apparent_size=max_apparent_size,
        )


def unpack_stream_into(
    source: ChunkReader,
    parent: Path,
    *,
    expected_diff_id: str | None,
    check_cancelled: Callable[[], None] = lambda: None,
    what: str = "layer",
    max_apparent_size: int | None = None,
) -> tuple[Path, UnpackResult]:
    """``unpack_into`` for a layer read from ``source`` (e.g. while it downloads)."""
    temp = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX, dir=parent))
    try:
        diff = temp / "diff"
        diff.mkdir()
        diff.chmod(0o755)
        result = extract_stream(
            source,
            diff,
            check_cancelled=check_cancelled,
            what=what,
            max_apparent_size=max_apparent_size,
        )
        if expected_diff_id is not None and result.diff_id != expected_diff_id:
            raise DigestMismatch(
                f"layer blob {what} unpacks to {result.diff_id}, but the image config says "
                f"{expected_diff_id}; the blob is corrupt or the image is wrong: delete the "
                "blob and pull again",
                expected=expected_diff_id,
                actual=result.diff_id,
            )
    except BaseException:
        with contextlib.suppress(OSError):  # else cleanup_stale deletes it at the next start
            remove_tree(temp)
        raise
    return temp, result
