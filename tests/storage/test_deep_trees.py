"""Trees deeper than Python's recursion limit and PATH_MAX: a container or a layer may make
them, and they must still be removed (and measured) without following symlinks, and a
leftover one must never stop start-up (issue 16, item 1)."""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from engine.plugins.storage_overlay.driver import REMOVING_PREFIX, OverlayDriver
from engine.plugins.storage_overlay.mount import unmount
from engine.store.rmtree import remove_tree, tree_bytes

from .conftest import mounts_under
from .layertar import LayerTar

DEPTH = 5000


def make_deep(top: Path, depth: int = DEPTH, *, files_every: int = 1000,
              outside: Path | None = None) -> None:
    """``top/a/a/.../a`` ``depth`` levels down, with a file (and a symlink to ``outside``)
    every ``files_every`` levels. Built through fds: the full path is far past PATH_MAX."""
    top.mkdir(parents=True, exist_ok=True)
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for level in range(depth):
            os.mkdir("a", dir_fd=fd)
            child = os.open("a", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = child
            if level % files_every == 0:
                file_fd = os.open("f", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
                os.write(file_fd, b"12345")
                os.close(file_fd)
                if outside is not None:
                    os.symlink(outside, "out", dir_fd=fd)
    finally:
        os.close(fd)


def depth_of(top: Path) -> int:
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    depth = 0
    try:
        while True:
            try:
                child = os.open("a", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            except FileNotFoundError:
                return depth
            os.close(fd)
            fd, depth = child, depth + 1
    finally:
        os.close(fd)


@pytest.fixture
def outside(tmp_path: Path) -> Iterator[Path]:
    """A directory the trees link to: it must survive every removal untouched."""
    path = tmp_path / "outside"
    path.mkdir()
    (path / "precious").write_text("keep me")
    yield path
    # pytest deletes old tmp dirs with shutil.rmtree, which a deep tree would break.
    for point in sorted(mounts_under(tmp_path), key=len, reverse=True):
        unmount(Path(point))
    remove_tree(tmp_path)


def test_remove_tree_at_depth_5000_never_follows_symlinks(tmp_path: Path, outside: Path) -> None:
    make_deep(tmp_path / "deep", outside=outside)
    os.symlink(outside, tmp_path / "top-link")
    assert depth_of(tmp_path / "deep") == DEPTH
    assert tree_bytes(tmp_path / "deep") >= 5 * (DEPTH // 1000)

    remove_tree(tmp_path / "deep")
    remove_tree(tmp_path / "top-link")  # the link itself goes, not what it points at

    assert not os.path.lexists(tmp_path / "deep")
    assert not os.path.lexists(tmp_path / "top-link")
    assert (outside / "precious").read_text() == "keep me"
    remove_tree(tmp_path / "deep")  # gone already: fine
    remove_tree(tmp_path / "no" / "such" / "parent")
    assert len(os.listdir("/proc/self/fd")) < 50  # one fd at a time, none leaked


def test_a_wide_tree_with_unreadable_modes_is_removed(tmp_path: Path, outside: Path) -> None:
    top = tmp_path / "wide"
    for i in range(300):
        sub = top / f"d{i}" / "x"
        sub.mkdir(parents=True)
        (sub / "f").write_bytes(b"x")
        (top / f"d{i}").chmod(0)  # a container may leave directories like this
    remove_tree(top)
    assert not top.exists()


def test_a_deep_path_layer_is_unpacked_and_removed(
    driver: OverlayDriver, write_layer, outside: Path
) -> None:
    # 1,500 levels in one entry name (a 10 KB layer) used to make `rmi` crash.
    deep = "/".join(["d"] * 1500)
    blob, diff_id = write_layer(LayerTar().dir("top").file(f"top/{deep}/leaf", b"leaf"))

    async def main() -> None:
        await driver.unpack_layer(blob, expected_diff_id=diff_id)
        assert await driver.list_layers() == [diff_id]
        await driver.remove_layer(diff_id)
        assert await driver.list_layers() == []

    trio.run(main)
    assert os.listdir(driver.layers_dir) == []  # no .removing-* left behind


def test_a_layer_replacing_a_deep_directory_with_a_file_unpacks(
    driver: OverlayDriver, write_layer, outside: Path
) -> None:
    deep = "/".join(["d"] * 1500)
    layer = LayerTar().file(f"x/{deep}/leaf", b"leaf").file("x", b"now a file")
    blob, diff_id = write_layer(layer)
    trio.run(driver.unpack_layer, blob)
    assert (driver.layer_dir(diff_id) / "diff" / "x").read_bytes() == b"now a file"


def test_a_deep_container_layer_is_measured_and_removed(
    driver: OverlayDriver, write_layer, outside: Path
) -> None:
    blob, diff_id = write_layer(LayerTar().dir("tmp"))

    async def main() -> None:
        await driver.unpack_layer(blob, expected_diff_id=diff_id)
        merged = await driver.mount("deep", [diff_id])
        await trio.to_thread.run_sync(lambda: make_deep(merged / "tmp", outside=outside))
        await driver.unmount("deep")
        usage = await driver.usage()
        assert usage.containers == 1 and usage.containers_bytes > 5 * DEPTH // 1000
        await driver.remove_container("deep")

    trio.run(main)
    assert os.listdir(driver.containers_dir) == []
    assert (outside / "precious").read_text() == "keep me"


def test_start_up_cleanup_removes_deep_leftovers(driver: OverlayDriver, outside: Path) -> None:
    driver._ensure_dirs()
    planted = [driver.containers_dir / f"{REMOVING_PREFIX}crash1" / "container",
               driver.layers_dir / f"{REMOVING_PREFIX}crash2" / "layer",
               driver.layers_dir / ".unpack-crash3" / "diff"]
    for path in planted:
        make_deep(path, outside=outside)

    report = driver.cleanup_stale_sync()

    assert sorted(report.removed) == sorted(str(p.parent) for p in planted)
    assert report.failed == []
    assert os.listdir(driver.containers_dir) == [] and os.listdir(driver.layers_dir) == []
    assert (outside / "precious").read_text() == "keep me"


def test_a_leftover_that_cannot_be_removed_is_logged_and_retried(
    driver: OverlayDriver, tmp_path: Path, outside: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A real failure: a mount point inside the debris makes rmdir fail with EBUSY.
    driver._ensure_dirs()
    stuck = driver.containers_dir / f"{REMOVING_PREFIX}stuck" / "container"
    busy = stuck / "busy"
    busy.mkdir(parents=True)
    make_deep(stuck / "deep", 2000)
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(busy)], check=True)
    try:
        with caplog.at_level(logging.WARNING):
            report = driver.cleanup_stale_sync()  # must not raise
        assert report.failed == [str(stuck.parent)]
        assert "retried later" in caplog.text and "stuck" in caplog.text
        assert stuck.parent.exists()
    finally:
        subprocess.run(["umount", str(busy)], check=True)

    # The next removal the driver does retries the debris.
    async def remove_another() -> None:
        driver.container_dir("other").mkdir()
        await driver.remove_container("other")

    trio.run(remove_another)
    assert os.listdir(driver.containers_dir) == []
