"""Sparse files stay sparse when a layer is unpacked, and their apparent size counts against
a limit (issue 16, item 7); numeric fields no syscall takes are a clear error naming the
entry (item 10). Layers made by GNU tar (GNU and PAX sparse formats) and by tarfile."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import subprocess
import tarfile
from pathlib import Path

import pytest
import trio

from engine.errors import ResourceExhausted, UnsafeContent
from engine.plugins.storage_overlay.driver import OverlayDriver
from engine.store.layout import Layout
from engine.testing.daemon import require_binary

GIB = 1024**3
SIZE = 2 * GIB
# Data regions of the sparse file: (offset, bytes); the rest is holes.
REGIONS = [(0, b"start"), (GIB, b"middle" * 1000), (SIZE - 3, b"end")]

# GNU tar's sparse formats: old GNU headers, and the three PAX variants.
FORMATS = {
    "gnu": ["--format=gnu"],
    "pax-0.0": ["--format=pax", "--sparse-version=0.0"],
    "pax-0.1": ["--format=pax", "--sparse-version=0.1"],
    "pax-1.0": ["--format=pax", "--sparse-version=1.0"],
}


def sparse_layer(tmp_path: Path, tar_args: list[str]) -> tuple[Path, str]:
    """A gzip layer holding ``big`` (2 GiB apparent, a few KB of data) and a small file."""
    require_binary("tar")
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    with open(src / "big", "wb") as f:
        f.truncate(SIZE)
        for offset, data in REGIONS:
            f.seek(offset)
            f.write(data)
    (src / "small").write_bytes(b"small file\n")
    plain = subprocess.run(["tar", "--sparse", *tar_args, "-C", str(src), "-cf", "-",
                            "big", "small"], check=True, capture_output=True).stdout
    (src / "big").unlink()
    assert len(plain) < 64 * 1024  # the layer itself is tiny
    blob = tmp_path / "sparse.tar.gz"
    blob.write_bytes(gzip.compress(plain))
    return blob, "sha256:" + hashlib.sha256(plain).hexdigest()


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_a_sparse_file_is_unpacked_with_its_holes(
    driver: OverlayDriver, tmp_path: Path, fmt: str
) -> None:
    blob, diff_id = sparse_layer(tmp_path, FORMATS[fmt])
    info = trio.run(driver.unpack_layer, blob)
    assert info.diff_id == diff_id and info.size == SIZE + len(b"small file\n")
    big = driver.layer_dir(diff_id) / "diff" / "big"
    st = big.stat()
    assert st.st_size == SIZE
    assert st.st_blocks * 512 < 4 * 1024 * 1024, "the holes were written out as real disk"
    with open(big, "rb") as f:
        for offset, data in REGIONS:
            f.seek(offset)
            assert f.read(len(data)) == data
        f.seek(GIB // 2)
        assert f.read(4096) == b"\0" * 4096
    assert (driver.layer_dir(diff_id) / "diff" / "small").read_bytes() == b"small file\n"


@pytest.mark.parametrize("fmt", ["gnu", "pax-1.0"])
def test_the_apparent_size_limit_refuses_the_layer_and_leaves_nothing(
    layout: Layout, tmp_path: Path, fmt: str
) -> None:
    driver = OverlayDriver(layout, durable=False, max_apparent_size=GIB)
    blob, diff_id = sparse_layer(tmp_path, FORMATS[fmt])
    with pytest.raises(ResourceExhausted, match=r"'big'.*max_apparent_size") as e:
        trio.run(driver.unpack_layer, blob)
    assert e.value.details["limit"] == GIB
    assert os.listdir(driver.layers_dir) == []  # no half-unpacked temp dir
    assert trio.run(driver.list_layers) == []


def test_the_limit_also_counts_plain_files(layout: Layout, tmp_path: Path) -> None:
    # A zstd/gzip bomb needs no sparse format: many big files of zeros compress to little.
    driver = OverlayDriver(layout, durable=False, max_apparent_size=3 * 1024 * 1024)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for i in range(4):
            info = tarfile.TarInfo(f"zeros{i}")
            info.size = 1024 * 1024
            tar.addfile(info, io.BytesIO(b"\0" * info.size))
    blob = tmp_path / "bomb.tar.gz"
    blob.write_bytes(gzip.compress(buf.getvalue()))
    with pytest.raises(ResourceExhausted, match="zeros3"):
        trio.run(driver.unpack_layer, blob)
    assert os.listdir(driver.layers_dir) == []


def pax_layer(tmp_path: Path, headers: dict[str, str]) -> Path:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("weird")
        info.size = 2
        info.pax_headers = headers
        tar.addfile(info, io.BytesIO(b"hi"))
    blob = tmp_path / "weird.tar"
    blob.write_bytes(buf.getvalue())
    return blob


@pytest.mark.parametrize(("headers", "field"), [
    ({"mtime": "nan"}, "mtime"),
    ({"mtime": "1e400"}, "mtime"),
    ({"mtime": "-1e30"}, "mtime"),
    ({"uid": str(2**40)}, "uid"),
    ({"gid": str(2**32)}, "gid"),
], ids=["mtime-nan", "mtime-1e400", "mtime-huge-negative", "uid-2^40", "gid-2^32"])
def test_impossible_pax_fields_are_clear_errors(
    driver: OverlayDriver, tmp_path: Path, headers: dict[str, str], field: str
) -> None:
    blob = pax_layer(tmp_path, headers)
    with pytest.raises(UnsafeContent, match=rf"'weird' has an invalid {field}") as e:
        trio.run(driver.unpack_layer, blob)
    assert e.value.code == "unsafe_content"
    assert os.listdir(driver.layers_dir) == []


def test_reasonable_pax_fields_still_unpack(driver: OverlayDriver, tmp_path: Path) -> None:
    blob = pax_layer(tmp_path, {"mtime": "1700000000.123456789", "uid": "4294967294",
                                "gid": "100000"})
    info = trio.run(driver.unpack_layer, blob)
    st = (driver.layer_dir(info.diff_id) / "diff" / "weird").stat()
    assert (st.st_uid, st.st_gid, int(st.st_mtime)) == (4294967294, 100000, 1700000000)
