"""Content-addressed blob store: ``content/blobs/sha256/<hex>``.

A blob becomes visible only once its bytes are verified against its digest (and size, when
known): writers stream into ``content/ingest/<hex>.partial`` and ``commit`` renames it into
place. A partial file left by an interrupted download is kept so the download can resume.
Methods here are blocking; the daemon calls them through ``trio.to_thread.run_sync``.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
from collections.abc import Iterator
from pathlib import Path

from engine.errors import DigestMismatch, InvalidArgument, NotFound
from engine.store.atomic import fsync_dir

_DIGEST_RE = re.compile(r"^sha256:[a-f0-9]{64}$")


def check_digest(digest: str) -> str:
    """Validate a digest string (only sha256 is accepted) and return it."""
    if not isinstance(digest, str) or not _DIGEST_RE.match(digest):
        raise InvalidArgument(f"invalid digest {digest!r}: expected sha256:<64 hex digits>")
    return digest


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class ContentStore:
    def __init__(self, blobs_dir: Path, ingest_dir: Path) -> None:
        self.blobs_dir = blobs_dir
        self.ingest_dir = ingest_dir
        (blobs_dir / "sha256").mkdir(parents=True, exist_ok=True)
        ingest_dir.mkdir(parents=True, exist_ok=True)

    def path(self, digest: str) -> Path:
        check_digest(digest)
        return self.blobs_dir / "sha256" / digest.removeprefix("sha256:")

    def has(self, digest: str) -> bool:
        return self.path(digest).exists()

    def size(self, digest: str) -> int:
        try:
            return self.path(digest).stat().st_size
        except FileNotFoundError:
            raise NotFound(f"blob {digest} is not in the content store") from None

    def ingest_path(self, digest: str) -> Path:
        """Where a download of ``digest`` streams to; its size says where to resume."""
        check_digest(digest)
        return self.ingest_dir / (digest.removeprefix("sha256:") + ".partial")

    def read(self, digest: str) -> bytes:
        try:
            return self.path(digest).read_bytes()
        except FileNotFoundError:
            raise NotFound(f"blob {digest} is not in the content store") from None

    def commit(
        self,
        partial: Path,
        digest: str,
        size: int | None = None,
        *,
        hashed: str | None = None,
        durable: bool = True,
    ) -> Path:
        """Verify ``partial`` against ``digest`` (and ``size``) and move it into place.

        ``hashed`` is the digest of the file's bytes when the writer computed it on the way
        in (``IngestWriter``), which spares reading the file again. ``durable=False`` leaves
        the data to the kernel's writeback: the rename still makes the blob appear whole or
        not at all to every process, but not across a power cut (pulls sync once at the end
        instead of once per blob).

        On mismatch the partial file is deleted (its bytes are wrong, resuming it would only
        repeat the error) and ``DigestMismatch`` is raised."""
        check_digest(digest)
        actual_size = partial.stat().st_size
        if size is not None and actual_size != size:
            partial.unlink(missing_ok=True)
            raise DigestMismatch(
                f"blob {digest}: expected {size} bytes, got {actual_size}", digest=digest
            )
        actual = hashed if hashed is not None else file_digest(partial)
        if actual != digest:
            partial.unlink(missing_ok=True)
            raise DigestMismatch(
                f"blob content does not match its digest: expected {digest}, got {actual}",
                expected=digest,
                actual=actual,
            )
        return self._publish(partial, digest, durable=durable)

    def write(self, data: bytes, digest: str | None = None) -> str:
        """Store bytes; verify them when ``digest`` is given. Returns the digest."""
        actual = sha256_digest(data)
        if digest is not None and actual != check_digest(digest):
            raise DigestMismatch(
                f"content does not match its digest: expected {digest}, got {actual}",
                expected=digest,
                actual=actual,
            )
        if self.has(actual):
            return actual
        # Unique per writer: threads of one daemon may store the same blob at once.
        partial = self.ingest_dir / f"{actual.removeprefix('sha256:')}.{secrets.token_hex(8)}.write"
        with open(partial, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        self._publish(partial, actual)
        return actual

    def _publish(self, partial: Path, digest: str, *, durable: bool = True) -> Path:
        if durable:
            with open(partial, "rb") as f:
                os.fsync(f.fileno())
        final = self.path(digest)
        os.replace(partial, final)
        if durable:
            fsync_dir(final.parent)
        return final

    def delete(self, digest: str) -> None:
        self.path(digest).unlink(missing_ok=True)

    def digests(self) -> Iterator[str]:
        for entry in os.scandir(self.blobs_dir / "sha256"):
            if _DIGEST_RE.match("sha256:" + entry.name):
                yield "sha256:" + entry.name

    def clean_ingest(self, keep_partials: bool = True) -> None:
        """Remove leftovers of interrupted writes; keep resumable ``.partial`` downloads."""
        for entry in os.scandir(self.ingest_dir):
            if keep_partials and entry.name.endswith(".partial"):
                continue
            Path(entry.path).unlink(missing_ok=True)


class IngestWriter:
    """Appends a download to its ingest file and hashes the bytes on the way, so that the
    digest of the whole file is known when the last byte is written (``commit(hashed=)``).

    Opening at ``offset`` keeps the file's first ``offset`` bytes (a resumed download),
    drops anything after them, and hashes the kept bytes first. Blocking: call the methods
    through ``trio.to_thread.run_sync``."""

    def __init__(self, partial: Path, offset: int) -> None:
        self._hash = hashlib.sha256()
        # unbuffered: writes are big (a list of network chunks, one writev)
        self._file = open(partial, "r+b" if offset else "wb", buffering=0)  # closed in close()
        try:
            if offset:
                self._file.truncate(offset)
                while chunk := self._file.read(_HASH_CHUNK):
                    self._hash.update(chunk)
            self.size = self._file.tell()
        except BaseException:
            self._file.close()
            raise

    def write(self, chunks: list[bytes]) -> None:
        """Append ``chunks`` (as they came off the network: joining them would copy)."""
        _writev_all(self._file.fileno(), chunks)
        for chunk in chunks:
            self._hash.update(chunk)
            self.size += len(chunk)

    def digest(self) -> str:
        return "sha256:" + self._hash.hexdigest()

    def close(self) -> None:
        self._file.close()


_HASH_CHUNK = 1024 * 1024
_IOV_MAX = 1024


def _writev_all(fd: int, chunks: list[bytes]) -> None:
    views = [memoryview(c) for c in chunks if c]
    while views:
        done = os.writev(fd, views[:_IOV_MAX])
        while views and done >= len(views[0]):
            done -= len(views[0])
            views.pop(0)
        if done:
            views[0] = views[0][done:]


def file_digest(path: Path) -> str:
    with open(path, "rb") as f:
        return "sha256:" + hashlib.file_digest(f, "sha256").hexdigest()
