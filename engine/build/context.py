"""The build context: a tar (maybe compressed) unpacked into a private directory, safely.

The context comes from the client and is not trusted. Every member is checked before
anything is written: a name that climbs out (``../x``, an absolute path that normalises
above the root), a symlink whose target leads out of the context, a hard link to something
outside it or not yet unpacked, and device files are refused with an error naming the
member. Entries are created relative to their parent's fd, opened with the path resolved
inside the context (``RESOLVE_IN_ROOT``), so even a link the archive made earlier cannot
lead a write elsewhere. ``.dockerignore`` is honoured (the Dockerfile and the ignore file
itself stay readable to the builder, as dockerd's). Blocking: call in worker threads.
"""

from __future__ import annotations

import fnmatch
import os
import posixpath
import re
import stat
import tarfile
from pathlib import Path
from typing import IO, Any

import attrs

from engine.errors import InvalidArgument, NotFound, UnsafeContent
from engine.store.treetar import DIR_FLAGS
from engine.supervisor.copy import open_in_root

CHUNK = 256 * 1024
MAX_CONTEXT_ENTRIES = 1_000_000


class HostileContext(UnsafeContent):
    """A member of the context would be written outside it, or is a device: the client's
    fault (HTTP 400), not the daemon's."""

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message, **{"http_status": 400, **details})


# --- .dockerignore ------------------------------------------------------------------------------


@attrs.frozen
class IgnorePattern:
    regex: re.Pattern[str]
    exclusion: bool  # a "!pattern": what it matches is kept after all
    dirs: tuple[str, ...] = ()


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """Go's filepath.Match syntax plus ``**`` (any number of directories), as moby's
    patternmatcher."""
    out = ["^"]
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "*":
            if pattern[i:i + 2] == "**":
                i += 2
                if pattern[i:i + 1] == "/":  # "**/" : zero or more directories
                    i += 1
                    out.append("(.*/)?")
                else:
                    out.append(".*")
                continue
            out.append("[^/]*")
        elif ch == "?":
            out.append("[^/]")
        elif ch == "[":
            end = pattern.find("]", i + 1)
            if end < 0:
                raise InvalidArgument(f"invalid .dockerignore pattern {pattern!r}: unclosed '['")
            body = pattern[i + 1:end]
            if body.startswith("^"):
                body = "!" + body[1:]
            out.append(fnmatch.translate(f"[{body}]").removeprefix("(?s:").removesuffix(")\\Z"))
            i = end
        elif ch == "\\" and i + 1 < len(pattern):
            out.append(re.escape(pattern[i + 1]))
            i += 1
        else:
            out.append(re.escape(ch))
        i += 1
    out.append("$")
    return re.compile("".join(out))


def parse_dockerignore(text: str) -> list[IgnorePattern]:
    patterns = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        exclusion = line.startswith("!")
        if exclusion:
            line = line[1:].strip()
        line = posixpath.normpath(line).lstrip("/")
        if line in ("", "."):
            continue
        patterns.append(IgnorePattern(_pattern_regex(line), exclusion))
    return patterns


def ignored(path: str, patterns: list[IgnorePattern]) -> bool:
    """Whether ``path`` (relative, no leading ``./``) is excluded: a pattern matches the path
    or one of its parent directories; the last matching pattern decides."""
    result = False
    parts = path.split("/")
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    for pattern in patterns:
        if any(pattern.regex.match(p) for p in prefixes):
            result = not pattern.exclusion
    return result


# --- unpacking ---------------------------------------------------------------------------------


def clean_member_name(name: str) -> str | None:
    """The member's path relative to the context root; None for the root itself. Raises
    HostileContext for a name that climbs out."""
    if "\x00" in name:
        raise HostileContext(f"build context member {name!r}: the name holds a NUL byte")
    norm = posixpath.normpath(name.lstrip("/")) if name.strip("/") else "."
    if norm == ".." or norm.startswith("../"):
        raise HostileContext(f"build context member {name!r} points outside the build context (path traversal)")
    return None if norm == "." else norm


def _link_stays_inside(member_path: str, target: str) -> bool:
    if target.startswith("/"):
        return False
    joined = posixpath.normpath(posixpath.join(posixpath.dirname(member_path), target))
    return not (joined == ".." or joined.startswith("../"))


def _open_parent(root_fd: int, parent: str) -> int:
    """The parent directory, made (0755) with its own parents when the archive did not
    list them; resolved inside the context."""
    try:
        return open_in_root(root_fd, parent, DIR_FLAGS & ~os.O_NOFOLLOW)
    except FileNotFoundError:
        if parent in ("", "/", "."):
            raise
    above, name = posixpath.split(parent)
    above_fd = _open_parent(root_fd, above or "/")
    try:
        try:
            os.mkdir(name, 0o755, dir_fd=above_fd)
        except FileExistsError:
            pass
    finally:
        os.close(above_fd)
    return open_in_root(root_fd, parent, DIR_FLAGS & ~os.O_NOFOLLOW)


def _check_member(member: tarfile.TarInfo, path: str, seen: set[str]) -> None:
    if member.ischr() or member.isblk():
        raise HostileContext(f"build context member {member.name!r} is a device file: devices are refused")
    if member.issym() and not _link_stays_inside(path, member.linkname):
        raise HostileContext(f"build context member {member.name!r} is a symbolic link to "
                             f"{member.linkname!r}, outside the build context")
    if member.islnk():
        target = clean_member_name(member.linkname)
        if target is None or target not in seen:
            raise HostileContext(f"build context member {member.name!r} is a hard link to {member.linkname!r}, "
                                 "which is not a file of the build context")
    if not (member.isreg() or member.isdir() or member.issym() or member.islnk() or member.isfifo()):
        raise HostileContext(f"build context member {member.name!r}: unsupported entry type {member.type!r}")


def _write_member(root_fd: int, path: str, member: tarfile.TarInfo, tar: tarfile.TarFile) -> None:
    parent, name = posixpath.split(path)
    parent_fd = _open_parent(root_fd, parent or "/")
    try:
        try:
            existing: os.stat_result | None = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
        except FileNotFoundError:
            existing = None
        if member.isdir():
            if existing is not None and not stat.S_ISDIR(existing.st_mode):
                os.unlink(name, dir_fd=parent_fd)
                existing = None
            if existing is None:
                os.mkdir(name, 0o700, dir_fd=parent_fd)
            fd = os.open(name, DIR_FLAGS, dir_fd=parent_fd)
            try:
                os.chmod(fd, member.mode & 0o7777)
            finally:
                os.close(fd)
            return
        if existing is not None:
            if stat.S_ISDIR(existing.st_mode):
                raise HostileContext(f"build context member {member.name!r} replaces a directory")
            os.unlink(name, dir_fd=parent_fd)
        if member.isreg():
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                         0o600, dir_fd=parent_fd)
            with os.fdopen(fd, "wb") as out:
                source = tar.extractfile(member)
                if source is not None:
                    while chunk := source.read(CHUNK):
                        out.write(chunk)
                os.chmod(out.fileno(), member.mode & 0o7777)
                os.utime(out.fileno(), (member.mtime, member.mtime))
        elif member.issym():
            os.symlink(member.linkname, name, dir_fd=parent_fd)
        elif member.isfifo():
            os.mkfifo(name, member.mode & 0o777, dir_fd=parent_fd)
        elif member.islnk():
            target = clean_member_name(member.linkname) or ""
            tparent, tname = posixpath.split(target)
            src_fd = open_in_root(root_fd, tparent or "/", DIR_FLAGS & ~os.O_NOFOLLOW)
            try:
                os.link(tname, name, src_dir_fd=src_fd, dst_dir_fd=parent_fd, follow_symlinks=False)
            finally:
                os.close(src_fd)
    finally:
        os.close(parent_fd)


def extract_context(archive: IO[bytes], dest: Path, *, dockerfile: str = "Dockerfile") -> int:
    """Unpack the context tar read from ``archive`` into the empty directory ``dest``.
    Honours the archive's ``.dockerignore`` when it comes first (docker's CLI and docker-py
    put it there; a later one is applied after unpacking). Returns the entries written."""
    root_fd = os.open(dest, DIR_FLAGS)
    count = 0
    seen: set[str] = set()
    patterns: list[IgnorePattern] = []
    keep = {".dockerignore", posixpath.normpath(dockerfile.lstrip("/"))}
    try:
        with tarfile.open(fileobj=archive, mode="r|*") as tar:
            for member in tar:
                path = clean_member_name(member.name)
                if path is None:
                    continue
                _check_member(member, path, seen)
                if patterns and path not in keep and ignored(path, patterns):
                    continue
                _write_member(root_fd, path, member, tar)
                seen.add(path)
                count += 1
                if count > MAX_CONTEXT_ENTRIES:
                    raise InvalidArgument(f"the build context has more than {MAX_CONTEXT_ENTRIES} entries")
                if path == ".dockerignore" and member.isreg():
                    patterns = parse_dockerignore(read_context_file(dest, ".dockerignore").decode(errors="replace"))
    except tarfile.TarError as e:
        raise InvalidArgument(f"the build context is not a valid tar archive: {e}") from None
    finally:
        os.close(root_fd)
    return count


def read_context_file(root: Path, path: str, limit: int = 16 * 1024 * 1024) -> bytes:
    """A regular file of the context (the Dockerfile, .dockerignore), resolved inside it."""
    root_fd = os.open(root, DIR_FLAGS)
    try:
        fd = open_in_root(root_fd, path, os.O_RDONLY)
    except FileNotFoundError:
        raise NotFound(f"cannot find {path} in the build context") from None
    except OSError as e:
        raise InvalidArgument(f"cannot read {path} in the build context: {e.strerror}") from None
    finally:
        os.close(root_fd)
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise InvalidArgument(f"{path} in the build context is not a regular file")
        data = f.read(limit + 1)
    if len(data) > limit:
        raise InvalidArgument(f"{path} in the build context is larger than {limit} bytes")
    return data


def context_ignores(root: Path) -> list[IgnorePattern]:
    try:
        return parse_dockerignore(read_context_file(root, ".dockerignore").decode(errors="replace"))
    except NotFound:
        return []


def pack_directory(directory: Path, out: IO[bytes], patterns: list[IgnorePattern],
                   dockerfile: str = "Dockerfile") -> None:
    """A local directory as a context tar (engctl's side of the RPC build), without what
    ``.dockerignore`` excludes; symlinks stay symlinks (never followed)."""
    keep = {".dockerignore", dockerfile}
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        first = directory / ".dockerignore"
        if first.is_file():
            tar.add(str(first), arcname=".dockerignore", recursive=False)
        for current, dirs, files in os.walk(directory):
            rel_dir = os.path.relpath(current, directory)
            for name in sorted(dirs + files):
                rel = name if rel_dir == "." else f"{rel_dir}/{name}"
                if rel == ".dockerignore":
                    continue
                if rel not in keep and ignored(rel, patterns):
                    if name in dirs:
                        dirs.remove(name)
                    continue
                tar.add(os.path.join(current, name), arcname=rel, recursive=False)
