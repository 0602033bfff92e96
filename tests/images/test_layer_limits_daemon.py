"""Through a real engined: a layer with a sparse file is refused beyond the overlay option
``max_apparent_size`` and kept sparse below it, a pax header with an impossible mtime is a
clear error, and the daemon serves on (issue 16, items 7 and 10)."""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.errors import ResourceExhausted, UnsafeContent
from engine.testing import images as ti
from engine.testing.daemon import Daemon, require, require_binary

GIB = 1024**3


def sparse_tar(tmp_path: Path) -> bytes:
    require_binary("tar")
    src = tmp_path / "src"
    src.mkdir()
    with open(src / "big", "wb") as f:
        f.truncate(2 * GIB)
        f.seek(GIB)
        f.write(b"data")
    out = subprocess.run(["tar", "--sparse", "--format=pax", "-C", str(src), "-cf", "-", "big"],
                         check=True, capture_output=True).stdout
    (src / "big").unlink()
    return out


def nan_mtime_tar() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("when")
        info.size = 2
        info.pax_headers = {"mtime": "nan"}
        tar.addfile(info, io.BytesIO(b"hi"))
    return buf.getvalue()


@pytest.fixture
def engine() -> Iterator[Daemon]:
    require(os.geteuid() == 0, "needs root (overlay)")
    d = Daemon(extra_args=["--default-network", "none"],
               config={"plugins": {"overlay": {"max_apparent_size": GIB}}})
    try:
        d.start()
        yield d
    finally:
        d.cleanup()


def archive(tmp_path: Path, name: str, layers: list[bytes]) -> str:
    path = tmp_path / f"{name}.tar"
    ti.write_docker_archive(path, [ti.TestImage(name=f"localhost/test/{name}:latest",
                                                layers=layers)])
    return str(path)


def test_a_layer_over_the_apparent_size_limit_is_refused(engine: Daemon, tmp_path: Path) -> None:
    with pytest.raises(ResourceExhausted, match="max_apparent_size"):
        engine.call("image.load", path=archive(tmp_path, "sparse", [sparse_tar(tmp_path)]))
    layers = engine.root / "storage" / "overlay" / "layers"
    assert not layers.exists() or os.listdir(layers) == []
    assert engine.call("image.list") == []
    assert engine.call("system.ping") == "pong"


def test_an_impossible_mtime_is_a_clear_error(engine: Daemon, tmp_path: Path) -> None:
    with pytest.raises(UnsafeContent, match=r"'when' has an invalid mtime nan"):
        engine.call("image.load", path=archive(tmp_path, "nan", [nan_mtime_tar()]))
    assert engine.call("system.ping") == "pong"


def test_a_bad_overlay_option_is_reported(tmp_path: Path) -> None:
    require(os.geteuid() == 0, "needs root (overlay)")
    d = Daemon(config={"plugins": {"overlay": {"max_apparent_size": "lots"}}})
    try:
        d.start()
        failed = d.call("system.info")["Plugins"]["failed"]
        assert "max_apparent_size must be a positive number of bytes" in failed["overlay"]
    finally:
        d.cleanup()
