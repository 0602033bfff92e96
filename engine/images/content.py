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

    def commit(self, partial: Path, digest: str, size: int | None = None) -> Path:
        """Verify ``partial`` against ``digest`` (and ``size``) and move it into place.

        On mismatch the partial file is deleted (its bytes are wrong, resuming it would only
        repeat the error) and ``DigestMismatch`` is raised."""
        check_digest(digest)
        actual_size = partial.stat().st_size
        if size is not None and actual_size != size:
            partial.unlink(missing_ok=True)
            raise DigestMismatch(
                f"blob {digest}: expected {size} bytes, got {actual_size}", digest=digest
            )
        actual = file_digest(partial)
        if actual != digest:
            partial.unlink(missing_ok=True)
            raise DigestMismatch(
                f"blob content does not match its digest: expected {digest}, got {actual}",
                expected=digest,
                actual=actual,
            )
        return self._publish(partial, digest)

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

    def _publish(self, partial: Path, digest: str) -> Path:
        with open(partial, "rb") as f:
            os.fsync(f.fileno())
        final = self.path(digest)
        os.replace(partial, final)
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


def file_digest(path: Path) -> str:
    with open(path, "rb") as f:
        return "sha256:" + hashlib.file_digest(f, "sha256").hexdigest()
