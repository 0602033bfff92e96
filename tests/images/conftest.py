"""Fixtures for the image store tests: a real overlay driver under the test's tmp_path.

Overlay needs root; a missing requirement skips locally but fails under CI (CI=true).
Every mount made under a test's tmp_path is unmounted in the fixture's finally block.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.images.content import ContentStore
from engine.images.store import ImageStore
from engine.plugins.storage_overlay.driver import OverlayDriver
from engine.plugins.storage_overlay.mount import read_mountinfo, unmount
from engine.store.layout import Layout
from engine.testing import images as ti
from engine.testing.daemon import require


def _mounts_under(path: Path) -> list[str]:
    prefix = str(path) + "/"
    return [e.mount_point for e in read_mountinfo() if e.mount_point.startswith(prefix)]


@pytest.fixture
def layout(tmp_path: Path) -> Iterator[Layout]:
    require(os.geteuid() == 0, "needs root (overlay mounts, layer ownership)")
    with open("/proc/filesystems") as f:
        require("overlay" in f.read(), "needs overlayfs (modprobe overlay)")
    require(ti.BUSYBOX.exists(), "needs /bin/busybox (apt install busybox-static)")
    layout = Layout(tmp_path / "root", tmp_path / "run")
    layout.ensure()
    try:
        yield layout
    finally:
        for point in sorted(_mounts_under(tmp_path), key=len, reverse=True):
            unmount(Path(point))


@pytest.fixture
def driver(layout: Layout) -> OverlayDriver:
    return OverlayDriver(layout, durable=False)


@pytest.fixture
def content(layout: Layout) -> ContentStore:
    return ContentStore(layout.blobs_dir, layout.ingest_dir)


@pytest.fixture
def store(layout: Layout, content: ContentStore, driver: OverlayDriver) -> ImageStore:
    return ImageStore(layout, content, driver)


# --- archives built once per session (busybox layers are ~2 MB; build them once) ----------


@pytest.fixture(scope="session")
def archives(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    if not ti.BUSYBOX.exists():
        return {}
    root = tmp_path_factory.mktemp("archives")
    out = {
        "busybox-docker": root / "busybox-docker.tar",
        "busybox-oci": root / "busybox-oci",
        "busybox-oci-tar": root / "busybox-oci.tar",
        "multi-docker": root / "multi-docker.tar",
        "multi-oci": root / "multi-oci",
        "many-oci": root / "many-oci",
        "busybox-zstd-oci": root / "busybox-zstd-oci",
        "busybox-plain-docker": root / "busybox-plain-docker.tar",
    }
    ti.write_docker_archive(out["busybox-docker"], [ti.busybox_image()])
    ti.write_oci_layout(out["busybox-oci"], [ti.busybox_image()])
    ti.write_oci_layout(out["busybox-oci-tar"], [ti.busybox_image()], as_tar=True)
    ti.write_docker_archive(out["multi-docker"], [ti.multilayer_image()])
    ti.write_oci_layout(out["multi-oci"], [ti.multilayer_image()])
    ti.write_oci_layout(out["many-oci"], [ti.many_layers_image(120)])
    ti.write_oci_layout(out["busybox-zstd-oci"], [ti.busybox_image()], compression="zstd")
    ti.write_docker_archive(out["busybox-plain-docker"], [ti.busybox_image()], compression="none")
    return out


@pytest.fixture
def busybox_id() -> str:
    return ti.build(ti.busybox_image(), "none").id


@pytest.fixture
def layout_factory_store(tmp_path: Path, layout: Layout) -> ImageStore:
    """A second, independent store (its own root) for round trips; mounts are cleaned by
    ``layout``'s fixture, which covers all of tmp_path."""
    other = Layout(tmp_path / "root2", tmp_path / "run2")
    other.ensure()
    return ImageStore(
        other,
        ContentStore(other.blobs_dir, other.ingest_dir),
        OverlayDriver(other, durable=False),
    )
