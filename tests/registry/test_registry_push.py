"""Push from the image store to a real registry, and pull it back unchanged."""

from __future__ import annotations

from pathlib import Path

import trio

from engine.images.content import ContentStore
from engine.images.pull import pull
from engine.images.push import push
from engine.images.store import ImageStore
from engine.plugins.registry.client import DistributionClient
from engine.plugins.storage_overlay.driver import OverlayDriver
from engine.reference import parse_reference
from engine.store.layout import Layout
from engine.testing.registry import Registry, fault_proxy, registry_server

from .conftest import make_client, small_image, whiteout_image


def fresh_store(tmp_path: Path, name: str) -> ImageStore:
    layout = Layout(tmp_path / name, tmp_path / f"{name}-run")
    layout.ensure()
    content = ContentStore(layout.blobs_dir, layout.ingest_dir)
    return ImageStore(layout, content, OverlayDriver(layout, durable=False))


async def test_push_then_pull_back_same_digest(
    tmp_path: Path, registry: Registry, client: DistributionClient, store: ImageStore, pushed
) -> None:
    pushed(whiteout_image(), "src/wh:latest", format="v2s2")
    with trio.fail_after(60):
        original = await pull(client, store, parse_reference(f"{registry.host}/src/wh:latest"))
        await store.tag(f"{registry.host}/src/wh:latest", f"{registry.host}/dst/wh:v1")
        digest = await push(client, store, parse_reference(f"{registry.host}/dst/wh:v1"))
        assert digest == original.manifest_digest
        other = fresh_store(tmp_path, "other")
        back = await pull(client, other, parse_reference(f"{registry.host}/dst/wh:v1"))
    assert back.manifest_digest == original.manifest_digest
    assert back.id == original.id
    assert back.diff_ids == original.diff_ids


async def test_upload_then_cross_repo_mount(
    tmp_path: Path, registry: Registry, store: ImageStore, pushed
) -> None:
    # pull through one client, push with a fresh client via a proxy that records requests
    pushed(small_image("m", size=200_000), "src/m:latest")
    puller = make_client(registry.host)
    with fault_proxy(registry.host) as proxy:
        pusher = make_client(proxy.host, registry.host)
        try:
            with trio.fail_after(60):
                image = await pull(puller, store, parse_reference(f"{registry.host}/src/m:latest"))
                # first push to a new repository of another registry name: full uploads
                await store.tag(f"{registry.host}/src/m:latest", f"{proxy.host}/one/m:latest")
                await store.tag(f"{registry.host}/src/m:latest", f"{proxy.host}/two/m:latest")
                d1 = await push(pusher, store, parse_reference(f"{proxy.host}/one/m:latest"))
                assert pusher.stats["blobs_uploaded"] == 2
                assert pusher.stats["blobs_mounted"] == 0
                d2 = await push(pusher, store, parse_reference(f"{proxy.host}/two/m:latest"))
                assert pusher.stats["blobs_mounted"] == 2
                assert pusher.stats["blobs_uploaded"] == 2
                # a third push of the same image finds everything present
                d3 = await push(pusher, store, parse_reference(f"{proxy.host}/two/m:latest"))
                assert pusher.stats["blobs_existing"] == 2
        finally:
            await puller.aclose()
            await pusher.aclose()
    assert d1 == d2 == d3 == image.manifest_digest
    mounted = [r for r in proxy.requests if "mount=" in r.path and r.status == 201]
    assert len(mounted) == 2 and all("from=one/m" in r.path for r in mounted)
    uploads = [r for r in proxy.requests if r.method == "PUT" and "/blobs/uploads/" in r.path]
    assert len(uploads) == 2  # config + layer, once each


async def test_chunked_upload(
    tmp_path: Path, registry: Registry, store: ImageStore, pushed
) -> None:
    pushed(small_image("big", size=300_000), "src/big:latest")
    with registry_server(tmp_path) as second:
        client = make_client(registry.host, second.host, chunk_threshold=64 * 1024)
        try:
            with trio.fail_after(60):
                ref = parse_reference(f"{registry.host}/src/big:latest")
                image = await pull(client, store, ref)
                target = f"{second.host}/chunked/big:1"
                await store.tag(str(ref), target)
                digest = await push(client, store, parse_reference(target))
                other = fresh_store(tmp_path, "other")
                back = await pull(client, other, parse_reference(target))
        finally:
            await client.aclose()
    assert digest == image.manifest_digest == back.manifest_digest
    assert client.stats["blobs_uploaded"] == 2, client.stats
