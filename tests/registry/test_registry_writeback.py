"""Pulled blobs and layers are not fsynced one by one: a marker records unsynced data, a
background syncfs removes it, and a start-up after a reboot with the marker still there
re-checks what was written since (a power cut may have emptied those files)."""

from __future__ import annotations

import json
import os

import trio

from engine.images.content import ContentStore
from engine.images.pull import pull
from engine.images.store import ImageStore, current_boot_id
from engine.plugins.storage_overlay.driver import OverlayDriver
from engine.reference import parse_reference
from engine.store.layout import Layout
from engine.testing.registry import Registry

from .conftest import make_client
from .oci_layouts import make_image, make_layer


def two_layer_image(tag: str):  # type: ignore[no-untyped-def]
    return make_image(
        [
            make_layer({"etc/": b"", "etc/base": f"base {tag}\n".encode()}),
            make_layer({"data/": b"", "data/x.bin": os.urandom(300_000)}),
        ]
    )


async def pull_ref(store: ImageStore, registry: Registry, name: str):  # type: ignore[no-untyped-def]
    client = make_client(registry.host)
    try:
        with trio.fail_after(60):
            return await pull(client, store, parse_reference(f"{registry.host}/{name}"))
    finally:
        await client.aclose()


def reopen(layout: Layout) -> ImageStore:
    """What a restarted daemon builds (the same root)."""
    content = ContentStore(layout.blobs_dir, layout.ingest_dir)
    return ImageStore(layout, content, OverlayDriver(layout, durable=False))


async def test_marker_is_removed_once_the_pull_is_synced(
    registry: Registry, store: ImageStore, pushed
) -> None:
    pushed(two_layer_image("a"), "test/wb:latest")
    marker = store.writeback.marker
    begun = trio.Event()
    original_begin = store.writeback.begin

    def begin() -> None:
        original_begin()
        assert marker.exists(), "the marker is written before any unsynced data"
        begun.set()

    store.writeback.begin = begin  # type: ignore[method-assign]
    await pull_ref(store, registry, "test/wb:latest")
    assert begun.is_set()
    assert await trio.to_thread.run_sync(store.writeback.wait_idle, 30.0)
    assert not marker.exists()


async def test_reboot_with_marker_rechecks_blobs_and_layers(
    registry: Registry, store: ImageStore, layout: Layout, pushed
) -> None:
    image = pushed(two_layer_image("b"), "test/pc:latest")
    pulled = await pull_ref(store, registry, "test/pc:latest")
    assert await trio.to_thread.run_sync(store.writeback.wait_idle, 30.0)

    # A power cut right after the pull: the marker of that boot is still there, and the big
    # layer's blob lost its data (what delayed allocation can leave behind).
    marker = store.writeback.marker
    marker.write_text(json.dumps({"boot_id": "an-earlier-boot", "since": 0}))
    damaged = store.content.path(image.layers[1].blob.digest)
    damaged.write_bytes(b"")

    restarted = reopen(layout)
    dropped = await restarted.reconcile()
    assert dropped == [pulled.id], "the image with a damaged blob is gone"
    assert not restarted.content.has(image.layers[1].blob.digest)
    assert restarted.content.has(image.layers[0].blob.digest), "an intact blob is kept"
    assert await restarted.storage.list_layers() == [], "layers written since are dropped"
    assert not marker.exists()

    # the next pull fetches only what was lost and works
    again = await pull_ref(restarted, registry, "test/pc:latest")
    assert again.id == pulled.id
    assert len(await restarted.storage.list_layers()) == 2


async def test_reboot_with_marker_reunpacks_layers_of_intact_images(
    registry: Registry, store: ImageStore, layout: Layout, pushed
) -> None:
    pushed(two_layer_image("c"), "test/ok:latest")
    pulled = await pull_ref(store, registry, "test/ok:latest")
    assert await trio.to_thread.run_sync(store.writeback.wait_idle, 30.0)
    store.writeback.marker.write_text(json.dumps({"boot_id": "an-earlier-boot", "since": 0}))
    written = {d: await store.storage.layer_written_at(d) for d in pulled.diff_ids}  # type: ignore[attr-defined]

    restarted = reopen(layout)
    assert await restarted.reconcile() == []
    assert [i.id for i in restarted.list()] == [pulled.id]
    # the layers were suspect, so they were unpacked again from the verified blobs
    assert sorted(await restarted.storage.list_layers()) == sorted(pulled.diff_ids)
    for diff_id, before in written.items():
        assert await restarted.storage.layer_written_at(diff_id) > before  # type: ignore[attr-defined]


async def test_marker_of_this_boot_keeps_layers_and_is_synced(
    registry: Registry, store: ImageStore, layout: Layout, pushed
) -> None:
    # The daemon was killed (not the machine): the page cache still holds every byte.
    pushed(two_layer_image("d"), "test/kill:latest")
    pulled = await pull_ref(store, registry, "test/kill:latest")
    assert await trio.to_thread.run_sync(store.writeback.wait_idle, 30.0)
    store.writeback.marker.write_text(json.dumps({"boot_id": current_boot_id(), "since": 0}))
    written = {d: await store.storage.layer_written_at(d) for d in pulled.diff_ids}  # type: ignore[attr-defined]

    restarted = reopen(layout)
    assert await restarted.reconcile() == []
    after = {d: await restarted.storage.layer_written_at(d) for d in pulled.diff_ids}  # type: ignore[attr-defined]
    assert after == written, "no layer was unpacked again"
    # the sync the killed daemon did not finish is done now, and the marker goes
    assert await trio.to_thread.run_sync(restarted.writeback.wait_idle, 30.0)
    assert not restarted.writeback.marker.exists()
