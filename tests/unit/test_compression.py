"""engine.compression: one sniffer and one decompressing reader for every caller."""

from __future__ import annotations

import gzip
import io
import sys
from pathlib import Path

import pytest
import zstandard

from engine.compression import (
    decompress_errors,
    decompressed,
    open_decompressed,
    sniff,
    sniff_file,
)

DATA = b"layer bytes " * 50_000


def _gzip_two_members(data: bytes) -> bytes:
    half = len(data) // 2
    return gzip.compress(data[:half], mtime=0) + gzip.compress(data[half:], mtime=0)


def _zstd_two_frames(data: bytes) -> bytes:
    half = len(data) // 2
    c = zstandard.ZstdCompressor()
    return c.compress(data[:half]) + c.compress(data[half:])


@pytest.mark.parametrize(
    ("blob", "kind"),
    [(_gzip_two_members(DATA), "gzip"), (_zstd_two_frames(DATA), "zstd"), (DATA, "none")],
)
def test_every_member_and_frame_is_read(tmp_path: Path, blob: bytes, kind: str) -> None:
    path = tmp_path / "blob"
    path.write_bytes(blob)
    assert sniff(blob[:4]) == kind
    assert sniff_file(path) == kind
    with open_decompressed(path) as stream:
        assert stream.read() == DATA


def test_short_and_empty_streams_are_plain(tmp_path: Path) -> None:
    assert sniff(b"") == "none"
    assert sniff(b"\x1f") == "none"
    path = tmp_path / "empty"
    path.write_bytes(b"")
    with open_decompressed(path) as stream:
        assert stream.read() == b""


def test_gzip_without_isal_reads_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "isal", None)  # import isal now raises ImportError
    with decompressed(io.BufferedReader(io.BytesIO(_gzip_two_members(DATA)))) as stream:
        assert type(stream).__module__ == "gzip"
        assert stream.read() == DATA


def test_gzip_uses_isal_where_installed() -> None:
    pytest.importorskip("isal")
    with decompressed(io.BufferedReader(io.BytesIO(gzip.compress(DATA)))) as stream:
        assert type(stream).__module__.startswith("isal")


@pytest.mark.parametrize(
    "blob",
    [gzip.compress(DATA)[:-100], gzip.compress(DATA)[:10] + b"\0" * 200,
     b"\x28\xb5\x2f\xfd" + b"\xff" * 100],
    # (python-zstandard's stream reader ends quietly at a truncated frame: the digests catch
    # those, not the reader)
    ids=["gzip-truncated", "gzip-corrupt", "zstd-corrupt"],
)
def test_corrupt_streams_raise_a_decompress_error(tmp_path: Path, blob: bytes) -> None:
    path = tmp_path / "blob"
    path.write_bytes(blob)
    with pytest.raises(decompress_errors()):
        with open_decompressed(path) as stream:
            while stream.read(65536):
                pass
