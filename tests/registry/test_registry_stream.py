"""Layers unpacked while they download (the overlay driver's layer_stream): the unpack may
fall behind and read the rest from the ingest file, a bad download or a bad layer commits
nothing, and a download that starts over restarts the unpack."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import attrs
import pytest
import trio

from engine.errors import DigestMismatch, UnsafeContent
from engine.images.pull import pull
from engine.images.store import ImageStore
from engine.plugins.storage_overlay import driver as overlay_driver
from engine.reference import parse_reference
from engine.testing.registry import Fault, Registry, fault_proxy

from .conftest import make_client
from .oci_layouts import Image, make_image, make_layer

MiB = 1024 * 1024


def big_image(tag: str, compression: str = "gzip") -> tuple[Image, dict[str, bytes]]:
    """Several MiB in a few files, so the download spans many chunks."""
    files = {
        "data/": b"",
        "data/a.bin": os.urandom(3 * MiB + 12345),
        "data/b.txt": (f"{tag}\n" * 300_000).encode(),
        "data/c.bin": os.urandom(2 * MiB),
    }
    return make_image([make_layer(files, compression)]), files


def diff_dir(store: ImageStore, diff_id: str) -> Path:
    return store.storage.layer_dir(diff_id) / "diff"  # type: ignore[attr-defined]


def assert_files(root: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        if not name.endswith("/"):
            assert hashlib.sha256((root / name).read_bytes()).digest() == hashlib.sha256(
                data
            ).digest(), name


async def assert_nothing_left(store: ImageStore) -> None:
    assert store.list() == []
    assert await store.storage.list_layers() == []
    layers_dir = store.storage.layers_dir  # type: ignore[attr-defined]
    assert [p.name for p in layers_dir.iterdir()] == [], "no temp unpack dir left"


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
@pytest.mark.parametrize("queued", [0, 1])
async def test_unpack_behind_the_download_reads_the_ingest_file(
    registry: Registry,
    store: ImageStore,
    pushed,
    monkeypatch: pytest.MonkeyPatch,
    compression: str,
    queued: int,
) -> None:
    # queued=0: every byte the unpack gets comes from the blob once verified. queued=1: the
    # first chunk list waits in the queue while the second is not queued (the unpack is
    # behind), then the third is: the unpack reads the gap from the ingest file.
    monkeypatch.setattr(overlay_driver, "_STREAM_BUFFER", queued)
    receive = overlay_driver.LayerStream._receive
    data = overlay_driver.LayerStream.data
    calls = 0
    first_taken = trio.Event()

    async def slow_receive(self: overlay_driver.LayerStream) -> tuple[object, ...]:
        await trio.sleep(0.05)
        message = await receive(self)
        if message[0] == "data":
            first_taken.set()
        return message

    async def paced_data(self: overlay_driver.LayerStream, chunks: list[bytes]) -> None:
        nonlocal calls
        calls += 1
        await data(self, chunks)
        if calls == 2 and queued:
            with trio.fail_after(10):
                await first_taken.wait()

    monkeypatch.setattr(overlay_driver.LayerStream, "_receive", slow_receive)
    monkeypatch.setattr(overlay_driver.LayerStream, "data", paced_data)
    image, files = big_image("behind", compression)
    pushed(image, "test/behind:latest")
    client = make_client(registry.host)
    try:
        with trio.fail_after(60):
            pulled = await pull(client, store, parse_reference(f"{registry.host}/test/behind:latest"))
    finally:
        await client.aclose()
    (diff_id,) = pulled.diff_ids
    assert diff_id == image.layers[0].diff_id
    assert_files(diff_dir(store, diff_id), files)
    assert os.listdir(store.layout.ingest_dir) == []


async def test_resumed_download_feeds_the_unpack_from_the_kept_bytes(
    registry: Registry, store: ImageStore, pushed
) -> None:
    image, files = big_image("cut")
    pushed(image, "test/cut:latest")
    layer = image.layers[0].blob
    with fault_proxy(registry.host) as proxy:
        # cuts inside and across the client's 1 MiB write buffer
        proxy.add(Fault(path=layer.digest, kind="cut", after_bytes=1_500_000, times=1))
        client = make_client(proxy.host)
        try:
            with trio.fail_after(60):
                pulled = await pull(client, store, parse_reference(f"{proxy.host}/test/cut:latest"))
        finally:
            await client.aclose()
    assert client.stats["resumes"] == 1
    assert_files(diff_dir(store, pulled.diff_ids[0]), files)


async def test_bad_kept_partial_restarts_download_and_unpack(
    registry: Registry, store: ImageStore, pushed
) -> None:
    image, files = big_image("stale")
    pushed(image, "test/stale:latest")
    layer = image.layers[0].blob
    # A partial left by an earlier attempt whose bytes are wrong: the resumed download fails
    # its digest check, the client starts over from 0, and so must the unpack.
    partial = store.content.ingest_path(layer.digest)
    partial.write_bytes(os.urandom(len(layer.data) // 2))
    client = make_client(registry.host)
    try:
        with trio.fail_after(60):
            pulled = await pull(client, store, parse_reference(f"{registry.host}/test/stale:latest"))
    finally:
        await client.aclose()
    assert client.stats["restarts_after_bad_partial"] == 1
    assert_files(diff_dir(store, pulled.diff_ids[0]), files)
    assert os.listdir(store.layout.ingest_dir) == []


async def test_wrong_diff_id_commits_no_layer(
    registry: Registry, store: ImageStore, pushed
) -> None:
    good = make_layer({"etc/": b"", "etc/x": os.urandom(2 * MiB)})
    lying = attrs.evolve(good, diff_id="sha256:" + "0" * 64)
    pushed(make_image([lying]), "test/lie:latest")
    client = make_client(registry.host)
    try:
        with trio.fail_after(60), pytest.raises(DigestMismatch) as caught:
            await pull(client, store, parse_reference(f"{registry.host}/test/lie:latest"))
    finally:
        await client.aclose()
    assert caught.value.details.get("actual") == good.diff_id
    await assert_nothing_left(store)


async def test_hostile_layer_streamed_commits_nothing(
    registry: Registry, store: ImageStore, pushed
) -> None:
    hostile = make_layer({"etc/": b"", "etc/ok": b"ok", "../../escaped": b"boom"})
    pushed(make_image([hostile]), "test/hostile:latest")
    client = make_client(registry.host)
    try:
        with trio.fail_after(60), pytest.raises(UnsafeContent):
            await pull(client, store, parse_reference(f"{registry.host}/test/hostile:latest"))
    finally:
        await client.aclose()
    await assert_nothing_left(store)  # the layers dir is empty: nothing escaped into it


async def test_corrupt_download_is_a_digest_mismatch_not_a_broken_tar(
    registry: Registry, store: ImageStore, pushed
) -> None:
    image, _ = big_image("corrupt")
    pushed(image, "test/corrupt:latest")
    layer = image.layers[0].blob
    with fault_proxy(registry.host) as proxy:
        # a flipped byte in the middle breaks the gzip stream long before the download ends
        proxy.add(Fault(path=layer.digest, kind="corrupt", times=10))
        client = make_client(proxy.host)
        try:
            with trio.fail_after(60), pytest.raises(DigestMismatch):
                await pull(client, store, parse_reference(f"{proxy.host}/test/corrupt:latest"))
        finally:
            await client.aclose()
    assert not store.content.has(layer.digest)
    assert os.listdir(store.layout.ingest_dir) == []
    await assert_nothing_left(store)
