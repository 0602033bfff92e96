"""Reading image archives safely: a tar, or a directory (an OCI image layout).

Tar members are never extracted by their own names: each regular file is written to a flat,
numbered scratch file and looked up by its normalised name, so a member called
``../../etc/passwd`` or ``/etc/passwd`` can never write outside the scratch directory. Such
names are refused outright (``UnsafeContent``), as are symlinks that leave the archive and
devices. Everything here is blocking; callers run it in a worker thread.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import posixpath
import shutil
import tarfile
from pathlib import Path
from typing import Protocol

from engine.errors import (
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    UnsafeContent,
    disk_full,
    no_space,
)

MAX_JSON_BYTES = 8 * 1024 * 1024  # manifests, configs, index.json: small documents
_LINK_DEPTH = 16


class ArchiveFiles(Protocol):
    """The files of an archive, by their path inside it."""

    origin: str

    def path(self, name: str) -> Path: ...

    def owned(self, name: str) -> bool:
        """True when the file is our scratch copy (it may be moved, not copied)."""
        ...

    def names(self) -> set[str]:
        """Top-level names that tell the archive's format."""
        ...


def clean_name(name: str, origin: str) -> str:
    """The member name normalised (``./a//b`` -> ``a/b``); refuses escaping names."""
    if name.startswith("/"):
        raise UnsafeContent(f"{origin}: member {name!r} has an absolute path; refusing the archive")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise UnsafeContent(
            f"{origin}: member {name!r} points outside the archive ('..'); refusing the archive"
        )
    return "/".join(parts)


class TarFiles:
    """A tar extracted into ``scratch`` under numbered names."""

    def __init__(self, tar_path: Path, scratch: Path) -> None:
        self.origin = str(tar_path)
        self._files: dict[str, Path] = {}
        self._links: dict[str, str] = {}
        self._extract(tar_path, scratch)

    def _extract(self, tar_path: Path, scratch: Path) -> None:
        try:
            tar = tarfile.open(tar_path, "r:*")
        except FileNotFoundError:
            raise NotFound(f"archive {tar_path} does not exist") from None
        except tarfile.TarError as e:
            raise InvalidArgument(f"{tar_path} is not a tar archive ({e})") from None
        with tar:
            try:
                for number, member in enumerate(tar):
                    self._add(tar, member, scratch / f"{number:08d}")
            except OSError as e:
                if (full := no_space(e)) is not None:  # our write failed, not their archive
                    raise disk_full(full, scratch) from None
                raise InvalidArgument(f"{tar_path}: truncated or corrupt tar ({e})") from None
            except (tarfile.TarError, EOFError, gzip.BadGzipFile) as e:
                raise InvalidArgument(f"{tar_path}: truncated or corrupt tar ({e})") from None

    def _add(self, tar: tarfile.TarFile, member: tarfile.TarInfo, target: Path) -> None:
        name = clean_name(member.name, self.origin)
        if member.isdir() or not name:
            return
        if member.issym() or member.islnk():
            base = posixpath.dirname(name) if member.issym() else ""
            joined = posixpath.normpath(posixpath.join(base, member.linkname))
            if member.linkname.startswith("/") or joined.startswith(".."):
                raise UnsafeContent(
                    f"{self.origin}: link {name!r} -> {member.linkname!r} points outside the "
                    "archive; refusing the archive"
                )
            self._links[name] = joined
            return
        if not member.isfile():
            raise UnsafeContent(
                f"{self.origin}: member {name!r} is a device, fifo or other special file; "
                "image archives hold only files, directories and links"
            )
        source = tar.extractfile(member)
        assert source is not None  # a regular file always has data
        with source, open(target, "wb") as out:
            shutil.copyfileobj(source, out, 1024 * 1024)
        self._files[name] = target

    def path(self, name: str) -> Path:
        key = clean_name(name, self.origin)
        for _ in range(_LINK_DEPTH):
            if key in self._files:
                return self._files[key]
            if key not in self._links:
                break
            key = self._links[key]
        raise InvalidArgument(f"{self.origin}: the archive has no file {name!r}; it is incomplete")

    def owned(self, name: str) -> bool:
        return True

    def names(self) -> set[str]:
        return set(self._files) | set(self._links)


class DirFiles:
    """An OCI image layout directory; paths may not leave it (even through symlinks)."""

    def __init__(self, root: Path) -> None:
        self.origin = str(root)
        self.root = root.resolve()

    def path(self, name: str) -> Path:
        key = clean_name(name, self.origin)
        candidate = Path(os.path.realpath(self.root / key))
        if not candidate.is_relative_to(self.root):
            raise UnsafeContent(f"{self.origin}: {name!r} resolves outside the layout directory")
        if not candidate.is_file():
            raise InvalidArgument(
                f"{self.origin}: the layout has no file {name!r}; it is incomplete"
            )
        return candidate

    def owned(self, name: str) -> bool:
        return False

    def names(self) -> set[str]:
        return {"oci-layout", "index.json"} & {p.name for p in self.root.iterdir()}


def read_small(files: ArchiveFiles, name: str, limit: int = MAX_JSON_BYTES) -> bytes:
    path = files.path(name)
    size = path.stat().st_size
    if size > limit:
        raise ResourceExhausted(
            f"{files.origin}: {name!r} is {size} bytes; documents over {limit} bytes are refused"
        )
    return path.read_bytes()


def file_sha256(path: Path) -> tuple[str, int]:
    with open(path, "rb") as f:
        digest = hashlib.file_digest(f, "sha256")
    return "sha256:" + digest.hexdigest(), path.stat().st_size
