"""The overlay driver on real overlay mounts: merged views, many layers, life cycle."""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from engine.errors import Conflict, DigestMismatch, NotFound
from engine.plugin import Register, StorageDriver
from engine.plugins.storage_overlay import plugin, unpack
from engine.plugins.storage_overlay.driver import OverlayDriver
from engine.plugins.storage_overlay.mount import is_mounted, read_mountinfo
from engine.store.layout import Layout

from .layertar import LayerTar

WriteLayer = Callable[..., tuple[Path, str]]


def mount_count(path: Path) -> int:
    return sum(1 for e in read_mountinfo() if e.mount_point == str(path))


async def unpack_all(
    driver: OverlayDriver, write_layer: WriteLayer, layers: list[LayerTar]
) -> list[str]:
    diff_ids = []
    for layer in layers:
        blob, diff_id = write_layer(layer)
        diff_ids.append((await driver.unpack_layer(blob, expected_diff_id=diff_id)).diff_id)
    return diff_ids


async def test_merged_view_applies_whiteouts_and_opaque_dirs(
    any_driver: OverlayDriver, write_layer: WriteLayer
) -> None:
    base = (
        LayerTar()
        .file("etc/a", b"a")
        .file("etc/b", b"b")
        .file("opq/old1", b"o")
        .file("opq/sub/old2", b"o")
        .file("gone", b"g")
        .file("gonedir/x", b"x")
    )
    middle = (
        LayerTar()
        .file(".wh.gone")
        .file(".wh.gonedir")
        .file("etc/.wh.a")
        .file("opq/.wh..wh..opq")
        .file("opq/new", b"n")
    )
    top = LayerTar().file("etc/c", b"c").file("etc/b", b"b2")
    layers = await unpack_all(any_driver, write_layer, [base, middle, top])

    merged = await any_driver.mount("c1", layers)

    assert sorted(os.listdir(merged / "etc")) == ["b", "c"]
    assert (merged / "etc/b").read_bytes() == b"b2"
    assert os.listdir(merged / "opq") == ["new"]
    assert not (merged / "gone").exists() and not (merged / "gonedir").exists()
    (merged / "written").write_bytes(b"w")
    upper = any_driver.container_dir("c1") / "upper"
    assert (upper / "written").read_bytes() == b"w"
    assert not (any_driver.layer_dir(layers[-1]) / "diff/written").exists()


@pytest.mark.timeout(60)
async def test_120_layers_mount(any_driver: OverlayDriver, write_layer: WriteLayer) -> None:
    layers = []
    for i in range(120):
        layer = LayerTar().file(f"layers/{i:03d}", str(i).encode()).file("shared", str(i).encode())
        if i == 0:
            layer.file("bottom", b"first")
        if i == 119:
            layer.file("top", b"last")
        layers.append(layer)
    diff_ids = await unpack_all(any_driver, write_layer, layers)

    started = time.perf_counter()
    merged = await any_driver.mount("many", diff_ids)
    elapsed = time.perf_counter() - started

    assert (merged / "bottom").read_bytes() == b"first"
    assert (merged / "top").read_bytes() == b"last"
    assert (merged / "shared").read_bytes() == b"119"
    assert len(os.listdir(merged / "layers")) == 120
    assert elapsed < 5, f"mounting 120 layers took {elapsed:.3f}s"
    assert any_driver.mount_method in ("new-mount-api", "mount8")
    assert (any_driver.mount_method == "new-mount-api") == any_driver._mounter.prefer_new_api


async def test_mount_is_idempotent_and_unmount_leaves_no_mount(
    driver: OverlayDriver, write_layer: WriteLayer
) -> None:
    layers = await unpack_all(driver, write_layer, [LayerTar().file("f", b"1")])
    first = await driver.mount("idem", layers)
    second = await driver.mount("idem", layers)
    assert first == second == driver.mountpoint("idem")
    assert mount_count(first) == 1

    await driver.unmount("idem")
    assert mount_count(first) == 0
    await driver.unmount("idem")  # not mounted: fine
    (first / "f").exists() and pytest.fail("merged still shows the layer after unmount")

    again = await driver.mount("idem", layers)  # the writable layer survives remounts
    (again / "kept").write_bytes(b"k")
    await driver.unmount("idem")
    assert (await driver.mount("idem", layers) / "kept").read_bytes() == b"k"

    await driver.remove_container("idem")
    assert mount_count(first) == 0
    assert not driver.container_dir("idem").exists()
    assert not any(str(driver.containers_dir) in e.mount_point for e in read_mountinfo())
    await driver.remove_container("idem")  # gone already: fine


async def test_read_only_single_layer(driver: OverlayDriver, write_layer: WriteLayer) -> None:
    layers = await unpack_all(driver, write_layer, [LayerTar().file("f", b"ro")])
    merged = await driver.mount("ro", layers, read_only=True)
    assert (merged / "f").read_bytes() == b"ro"
    with pytest.raises(OSError) as caught:
        (merged / "new").write_bytes(b"x")
    assert caught.value.errno == errno.EROFS


async def test_mount_without_layers_and_unknown_layer(driver: OverlayDriver) -> None:
    merged = await driver.mount("scratch", [])
    assert os.listdir(merged) == []
    with pytest.raises(NotFound, match="not unpacked"):
        await driver.mount("missing", ["sha256:" + "0" * 64])


async def test_diff_id_mismatch_leaves_nothing(
    driver: OverlayDriver, write_layer: WriteLayer
) -> None:
    blob, diff_id = write_layer(LayerTar().file("f", b"x"))
    wrong = "sha256:" + "1" * 64
    with pytest.raises(DigestMismatch, match=wrong):
        await driver.unpack_layer(blob, expected_diff_id=wrong)
    assert list(driver.layers_dir.iterdir()) == []
    assert list(driver.links_dir.iterdir()) == []
    assert not await driver.has_layer(wrong) and not await driver.has_layer(diff_id)


@pytest.mark.parametrize("with_diff_id", [True, False])
async def test_concurrent_unpacks_share_one_layer(
    with_diff_id: bool, driver: OverlayDriver, write_layer: WriteLayer
) -> None:
    layer = LayerTar()
    for i in range(200):
        layer.file(f"d/{i}", b"x" * 1000)
    blob, diff_id = write_layer(layer)
    results = []

    async def unpack() -> None:
        expected = diff_id if with_diff_id else None
        results.append(await driver.unpack_layer(blob, expected_diff_id=expected))

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(unpack)

    assert {r.diff_id for r in results} == {diff_id}
    assert await driver.list_layers() == [diff_id]
    assert len(list(driver.layers_dir.iterdir())) == 1
    assert len(list(driver.links_dir.iterdir())) == 1


async def test_remove_layer_refused_while_mounted(
    driver: OverlayDriver, write_layer: WriteLayer
) -> None:
    layers = await unpack_all(driver, write_layer, [LayerTar().file("f"), LayerTar().file("g")])
    await driver.mount("user", layers)
    with pytest.raises(Conflict, match="user"):
        await driver.remove_layer(layers[0])

    await driver.unmount("user")
    await driver.remove_layer(layers[0])
    await driver.remove_layer(layers[0])  # missing: fine
    assert await driver.list_layers() == [layers[1]]
    assert len(list(driver.links_dir.iterdir())) == 1
    assert [p.name for p in driver.layers_dir.iterdir()] == [layers[1].removeprefix("sha256:")]


async def test_cleanup_stale_and_usage(driver: OverlayDriver, write_layer: WriteLayer) -> None:
    layers = await unpack_all(driver, write_layer, [LayerTar().file("f", b"12345")])
    merged = await driver.mount("alive", layers)
    (merged / "grow").write_bytes(b"x" * 4096)
    crashed = driver.layers_dir / ".unpack-crashed"
    (crashed / "diff").mkdir(parents=True)
    (driver.links_dir / "dangling01").symlink_to("../layers/" + "f" * 64 + "/diff")

    report = await driver.cleanup_stale()

    assert str(crashed) in report.removed and not crashed.exists()
    assert not (driver.links_dir / "dangling01").is_symlink()
    assert report.mounted == ["alive"]
    assert (merged / "f").read_bytes() == b"12345"  # live layers and links untouched
    usage = await driver.usage()
    assert (usage.layers, usage.layers_bytes, usage.containers) == (1, 5, 1)
    assert usage.containers_bytes >= 4096


async def test_link_recreated_when_lost(driver: OverlayDriver, write_layer: WriteLayer) -> None:
    layers = await unpack_all(driver, write_layer, [LayerTar().file("f", b"1")])
    for link in driver.links_dir.iterdir():
        link.unlink()
    merged = await driver.mount("relink", layers)
    assert (merged / "f").read_bytes() == b"1"


def test_availability_and_plugin_registration(tmp_path: Path) -> None:
    register = Register()
    plugin.engine_add_storage_drivers(
        register, {"root": str(tmp_path / "root"), "run_root": str(tmp_path / "run")}
    )
    driver = register.storage_drivers["overlay"]
    assert isinstance(driver, StorageDriver)
    assert driver.availability().ok, driver.availability().reason


async def test_mount_leaves_nothing_after_fixture(
    driver: OverlayDriver, write_layer: WriteLayer
) -> None:
    layers = await unpack_all(driver, write_layer, [LayerTar().file("f")])
    merged = await driver.mount("left", layers)
    assert is_mounted(merged)  # the layout fixture's finally unmounts it


async def test_cancelled_unpack_leaves_no_temp_dir(
    driver: OverlayDriver, write_layer: WriteLayer, monkeypatch: pytest.MonkeyPatch
) -> None:
    layer = LayerTar()
    for i in range(2000):
        layer.file(f"many/{i}", b"x")
    blob, diff_id = write_layer(layer, "none")
    started = trio.Event()
    original_apply = unpack.Extractor.apply

    def apply_and_signal(self: unpack.Extractor, *args: Any) -> None:
        # Tell the test (on the trio thread) that extraction has begun, then carry on.
        if not started.is_set():
            trio.from_thread.run_sync(started.set)
        original_apply(self, *args)

    monkeypatch.setattr(unpack.Extractor, "apply", apply_and_signal)

    async def cancel_once_started(scope: trio.CancelScope) -> None:
        await started.wait()
        scope.cancel()

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            with trio.CancelScope() as scope:
                nursery.start_soon(cancel_once_started, scope)
                await driver.unpack_layer(blob, expected_diff_id=diff_id)
    assert started.is_set() and scope.cancelled_caught
    assert list(driver.layers_dir.iterdir()) == []
    assert list(driver.links_dir.iterdir()) == []


async def test_availability_refuses_a_root_on_overlay(
    driver: OverlayDriver, write_layer: WriteLayer, layout: Layout
) -> None:
    layers = await unpack_all(driver, write_layer, [LayerTar().dir("var")])
    merged = await driver.mount("host", layers)
    nested = OverlayDriver(Layout(merged / "var/lib/engine", layout.run_root))
    verdict = nested.availability()
    assert not verdict.ok and "overlay" in verdict.reason and "--root" in verdict.reason


async def test_existing_layer_needs_no_blob(driver: OverlayDriver, write_layer: WriteLayer) -> None:
    blob, diff_id = write_layer(LayerTar().file("f", b"1"))
    first = await driver.unpack_layer(blob, expected_diff_id=diff_id)
    blob.unlink()
    assert await driver.unpack_layer(blob, expected_diff_id=diff_id) == first
    with pytest.raises(NotFound, match="does not exist"):
        await driver.unpack_layer(blob)
