"""COPY and ADD: sources (from the context or another image's root) into a step's root.

Both sides are fds of a root directory, and every path is resolved inside its root
(``engine.supervisor.copy``: ``RESOLVE_IN_ROOT``), so neither a symlink in the context nor
one in an image can lead a read or a write elsewhere. A source is first archived as
``docker cp`` archives it, then its entries are renamed to where docker's rules put them
(a directory's contents into the destination, a file into a destination directory or as
the destination), their owner set (``--chown``, else root) and mode (``--chmod``), then
extracted into the step's root. Blocking: run in worker threads.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import posixpath
import stat
import tarfile
import tempfile
from typing import IO

import attrs

from engine.errors import InvalidArgument, NotFound
from engine.store.treetar import DIR_FLAGS
from engine.supervisor.copy import archive_path, extract_into, open_in_root

SPOOL = 8 * 1024 * 1024  # bytes of a tar kept in memory before it spills to disk
WILDCARDS = ("*", "?", "[")


@attrs.frozen
class CopyRequest:
    sources: list[str]  # as written (expanded), relative to the source root
    dest: str  # absolute, maybe with a trailing slash
    uid: int = 0
    gid: int = 0
    chmod: int | None = None
    extract_archives: bool = False  # ADD: a local tar's contents, not the tar
    instruction: str = "COPY"


def _walk_names(root_fd: int) -> list[str]:
    """Every path of a root (for wildcard sources), not following symlinks."""
    names: list[str] = []

    def walk(fd: int, prefix: str) -> None:
        for entry in sorted(os.listdir(fd)):
            path = f"{prefix}{entry}"
            names.append(path)
            st = os.stat(entry, dir_fd=fd, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                sub = os.open(entry, DIR_FLAGS, dir_fd=fd)
                try:
                    walk(sub, path + "/")
                finally:
                    os.close(sub)

    dup = os.open(".", DIR_FLAGS, dir_fd=root_fd)
    try:
        walk(dup, "")
    finally:
        os.close(dup)
    return names


def resolve_sources(root_fd: int, sources: list[str], instruction: str) -> list[str]:
    """The sources as clean paths inside the root; wildcards matched (docker's
    filepath.Match per path). A source that climbs out of the context is refused."""
    resolved: list[str] = []
    names: list[str] | None = None
    for source in sources:
        if source.startswith(("http://", "https://")):
            raise InvalidArgument(f"{instruction} from a URL ({source}) is not supported by engine's builder: "
                                  "download the file into the build context first")
        clean = posixpath.normpath("/" + source).lstrip("/")
        if posixpath.normpath(source.lstrip("/")).startswith("../"):
            raise InvalidArgument(f"{instruction} failed: forbidden path outside the build context: {source} ()")
        if any(w in clean for w in WILDCARDS):
            if names is None:
                names = _walk_names(root_fd)
            matched = [n for n in names if fnmatch.fnmatchcase(n, clean) and n.count("/") == clean.count("/")]
            resolved += matched
            continue
        resolved.append(clean or ".")
    if not resolved:
        raise InvalidArgument(f"{instruction} failed: no source files were specified")
    return resolved


def _archive(root_fd: int, path: str, instruction: str) -> IO[bytes]:
    spool = tempfile.SpooledTemporaryFile(max_size=SPOOL)  # noqa: SIM115 - returned open
    try:
        archive_path(root_fd, "/" + path if path != "." else "/", spool.write, follow=True)
    except NotFound:
        spool.close()
        raise NotFound(f"{instruction} failed: file not found in build context or excluded by .dockerignore: "
                       f"stat {path}: file does not exist") from None
    spool.seek(0)
    return spool


def _mode(root_fd: int, path: str) -> int | None:
    """The file type bits of ``path`` inside the root (links not followed out), None when missing."""
    try:
        fd = open_in_root(root_fd, path, os.O_PATH)
    except OSError:
        return None
    try:
        return os.fstat(fd).st_mode
    finally:
        os.close(fd)


def _is_dir(root_fd: int, path: str) -> bool:
    mode = _mode(root_fd, path)
    return mode is not None and stat.S_ISDIR(mode)


def _is_file(root_fd: int, path: str) -> bool:
    mode = _mode(root_fd, path)
    return mode is not None and stat.S_ISREG(mode)


def _local_archive(root_fd: int, path: str) -> IO[bytes] | None:
    """ADD: the source file opened when it is a tar (maybe compressed), else None."""
    if not _is_file(root_fd, path):
        return None
    fd = open_in_root(root_fd, path, os.O_RDONLY)
    f = os.fdopen(fd, "rb")
    try:
        with tarfile.open(fileobj=f, mode="r:*") as tar:
            tar.next()
    except (tarfile.TarError, EOFError, OSError):
        f.close()
        return None
    f.seek(0)
    return f


def _dir_member(name: str, uid: int, gid: int, mode: int = 0o755) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = mode
    info.uid, info.gid = uid, gid
    return info


def copy_into(src_root_fd: int, dest_root_fd: int, request: CopyRequest) -> str:
    """Copy ``request``'s sources into the destination root. Returns the content digest of
    what was copied (the ``file:``/``dir:`` of docker's history line)."""
    sources = resolve_sources(src_root_fd, request.sources, request.instruction)
    dest = request.dest
    many = len(sources) > 1 or any(any(w in s for w in WILDCARDS) for s in request.sources)
    dest_is_dir = dest.endswith("/") or _is_dir(dest_root_fd, dest)
    if many and not dest.endswith("/") and not _is_dir(dest_root_fd, dest):
        raise InvalidArgument(f"When using {request.instruction} with more than one source file, the "
                              "destination must be a directory and end with a /")
    dest = posixpath.normpath(dest)
    digest = hashlib.sha256()
    kinds: set[str] = set()
    for source in sources:
        if request.extract_archives:
            archive = _local_archive(src_root_fd, source)
            if archive is not None:
                with archive:
                    _make_dir(dest_root_fd, dest, request)
                    hashed = _Hashing(archive, digest)
                    extract_into(dest_root_fd, dest, hashed, copy_uid_gid=True)  # type: ignore[arg-type]
                kinds.add("file")
                continue
        with _archive(src_root_fd, source, request.instruction) as spool, \
                tempfile.SpooledTemporaryFile(max_size=SPOOL) as out:
            kind = _rename(spool, out, dest, dest_is_dir, request, digest)
            kinds.add(kind)
            out.seek(0)
            extract_into(dest_root_fd, "/", out, copy_uid_gid=True)  # type: ignore[arg-type]
    kind = kinds.pop() if len(kinds) == 1 and len(sources) == 1 else "multi"
    return f"{kind}:{digest.hexdigest()}"


def source_digest(src_root_fd: int, sources: list[str], instruction: str) -> str:
    """The build cache's checksum of what a COPY/ADD would copy (blocking): each source's
    files as ``docker cp`` archives them, by name, type, mode, owner, link target and
    bytes. Wildcards are matched as ``copy_into`` matches them; a missing source fails
    with the same words."""
    digest = hashlib.sha256()
    for source in resolve_sources(src_root_fd, sources, instruction):
        digest.update(f"source\0{source}\0".encode())
        with _archive(src_root_fd, source, instruction) as spool, tarfile.open(fileobj=spool, mode="r|") as tar:
            for member in tar:
                digest.update(f"{member.name}\0{member.type!r}\0{member.mode:o}\0{member.uid}:{member.gid}\0"
                              f"{member.linkname}\0{member.size}\0".encode())
                if member.isreg():
                    data = tar.extractfile(member)
                    while data is not None and (chunk := data.read(256 * 1024)):
                        digest.update(chunk)
    return "sha256:" + digest.hexdigest()


def _make_dir(dest_root_fd: int, dest: str, request: CopyRequest) -> None:
    if _is_dir(dest_root_fd, dest):
        return
    with tempfile.SpooledTemporaryFile(max_size=SPOOL) as out:
        with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
            tar.addfile(_dir_member(dest.lstrip("/"), request.uid, request.gid))
        out.seek(0)
        extract_into(dest_root_fd, "/", out, copy_uid_gid=True)  # type: ignore[arg-type]


def _rename(spool: IO[bytes], out: IO[bytes], dest: str, dest_is_dir: bool, request: CopyRequest,
            digest: hashlib._Hash) -> str:
    """Rewrite a source's tar (top entry named after the source) with the destination's
    names, owner and mode. Returns "dir" or "file"."""
    kind = "file"
    with tarfile.open(fileobj=spool, mode="r|") as src, \
            tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        first = True
        for member in src:
            top, _, rest = member.name.partition("/")
            if first:
                first = False
                kind = "dir" if member.isdir() else "file"
            if kind == "dir":
                target = dest if not rest else posixpath.join(dest, rest)
            else:
                target = posixpath.join(dest, top) if dest_is_dir else dest
            if target == "/":
                continue  # COPY . / : the root itself keeps its owner and mode
            member.name = target.lstrip("/")
            member.uid, member.gid = request.uid, request.gid
            member.uname = member.gname = ""
            if request.chmod is not None and not member.issym():
                member.mode = request.chmod
            digest.update(f"{member.name}\0{member.mode:o}\0{member.type!r}\0{member.linkname}\0".encode())
            if member.isreg():
                data = src.extractfile(member)
                spool_data = tempfile.SpooledTemporaryFile(max_size=SPOOL)
                with spool_data:
                    if data is not None:
                        while chunk := data.read(256 * 1024):
                            digest.update(chunk)
                            spool_data.write(chunk)
                    spool_data.seek(0)
                    tar.addfile(member, spool_data)
            else:
                tar.addfile(member)
    return kind


class _Hashing:
    """A file object that hashes what is read through it."""

    def __init__(self, f: IO[bytes], digest: hashlib._Hash) -> None:
        self._f = f
        self._digest = digest

    def read(self, size: int = -1) -> bytes:
        data = self._f.read(size)
        self._digest.update(data)
        return data


def parse_chmod(value: str) -> int:
    try:
        mode = int(value, 8)
    except ValueError:
        raise InvalidArgument(f"invalid --chmod {value!r}: expected an octal mode such as 755") from None
    if not 0 <= mode <= 0o7777:
        raise InvalidArgument(f"invalid --chmod {value!r}: expected an octal mode such as 755")
    return mode
