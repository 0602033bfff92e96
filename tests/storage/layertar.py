"""LayerTar: layer tars built member by member with tarfile, for the storage tests."""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
from pathlib import Path
from typing import Any

import attrs
import zstandard


@attrs.define
class LayerTar:
    """A layer tar built in memory, member by member, then written compressed or not."""

    entries: list[tuple[tarfile.TarInfo, bytes | None]] = attrs.field(factory=list)
    trailer: bytes = b""  # extra bytes after the end-of-archive marker

    def _info(
        self,
        name: str,
        kind: bytes,
        mode: int,
        *,
        mtime: float = 1_600_000_000,
        uid: int = 0,
        gid: int = 0,
        xattrs: dict[str, str] | None = None,
        **fields: Any,
    ) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.type = kind
        info.mode = mode
        info.mtime = mtime
        info.uid, info.gid = uid, gid
        info.pax_headers = {f"SCHILY.xattr.{k}": v for k, v in (xattrs or {}).items()}
        for key, value in fields.items():  # linkname, devmajor, devminor
            setattr(info, key, value)
        return info

    def file(self, name: str, data: bytes = b"", mode: int = 0o644, **kw: Any) -> LayerTar:
        info = self._info(name, tarfile.REGTYPE, mode, **kw)
        info.size = len(data)
        self.entries.append((info, data))
        return self

    def dir(self, name: str, mode: int = 0o755, **kw: Any) -> LayerTar:
        self.entries.append((self._info(name, tarfile.DIRTYPE, mode, **kw), None))
        return self

    def symlink(self, name: str, target: str, **kw: Any) -> LayerTar:
        info = self._info(name, tarfile.SYMTYPE, 0o777, linkname=target, **kw)
        self.entries.append((info, None))
        return self

    def hardlink(self, name: str, target: str, **kw: Any) -> LayerTar:
        info = self._info(name, tarfile.LNKTYPE, 0o644, linkname=target, **kw)
        self.entries.append((info, None))
        return self

    def chardev(self, name: str, major: int, minor: int, mode: int = 0o666) -> LayerTar:
        info = self._info(name, tarfile.CHRTYPE, mode, devmajor=major, devminor=minor)
        self.entries.append((info, None))
        return self

    def tar_bytes(self) -> bytes:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for info, data in self.entries:
                tar.addfile(info, io.BytesIO(data) if data is not None else None)
        return buf.getvalue() + self.trailer

    def write(self, path: Path, compression: str = "gzip") -> tuple[Path, str]:
        """Write the blob; return its path and the diff_id (sha256 of the plain tar)."""
        raw = self.tar_bytes()
        if compression == "gzip":
            blob = gzip.compress(raw)
        elif compression == "zstd":
            blob = zstandard.ZstdCompressor().compress(raw)
        else:
            blob = raw
        path.write_bytes(blob)
        return path, "sha256:" + hashlib.sha256(raw).hexdigest()
