"""Fixtures for the overlay storage tests: real overlay mounts, layers built with tarfile.

These tests need root and overlayfs. A missing requirement skips locally but fails under CI
(env CI=true), so a CI host that cannot run them is noticed.
Every mount made under a test's tmp_path is unmounted in the fixture's finally block.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from engine.plugins.storage_overlay.driver import OverlayDriver
from engine.plugins.storage_overlay.mount import read_mountinfo, unmount
from engine.store.layout import Layout
from engine.testing.daemon import require

from .layertar import LayerTar


@pytest.fixture(autouse=True)
def _needs_root_and_overlay() -> None:
    require(os.geteuid() == 0, "needs root (mknod, chown, overlay mounts)")
    with open("/proc/filesystems") as f:
        require("overlay" in f.read(), "needs overlayfs (modprobe overlay)")


def mounts_under(path: Path) -> list[str]:
    prefix = str(path) + "/"
    return [e.mount_point for e in read_mountinfo() if e.mount_point.startswith(prefix)]


@pytest.fixture
def layout(tmp_path: Path) -> Iterator[Layout]:
    layout = Layout(tmp_path / "root", tmp_path / "run")
    try:
        yield layout
    finally:
        # Deepest first, so a mount stacked inside another comes off before its parent.
        for point in sorted(mounts_under(tmp_path), key=len, reverse=True):
            unmount(Path(point))


@pytest.fixture
def driver(layout: Layout) -> OverlayDriver:
    return OverlayDriver(layout, durable=False)


@pytest.fixture(params=[True, False], ids=["new-mount-api", "mount8"])
def any_driver(layout: Layout, request: pytest.FixtureRequest) -> OverlayDriver:
    """The driver with each mount path: fsopen/fsconfig, and mount(8) with short links."""
    return OverlayDriver(layout, durable=False, prefer_new_mount_api=request.param)


@pytest.fixture
def blob_dir(tmp_path: Path) -> Path:
    path = tmp_path / "blobs"
    path.mkdir()
    return path


@pytest.fixture
def write_layer(blob_dir: Path) -> Callable[..., tuple[Path, str]]:
    counter = iter(range(1_000_000))

    def write(layer: LayerTar, compression: str = "gzip") -> tuple[Path, str]:
        return layer.write(blob_dir / f"layer-{next(counter)}.{compression}", compression)

    return write
