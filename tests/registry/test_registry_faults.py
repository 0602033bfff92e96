"""Faults between the client and a real registry: cuts, corruption, 5xx/429, huge manifests,
and concurrent pulls sharing a layer."""

from __future__ import annotations

import json
import os

import pytest
import trio

from engine.errors import DigestMismatch, ResourceExhausted
from engine.images.pull import pull
from engine.images.store import ImageStore
from engine.reference import parse_reference
from engine.testing.registry import Fault, Registry, fault_proxy

from .conftest import make_client, small_image
from .oci_layouts import make_image, make_layer

BLOB_SIZE = 600_000


async def test_cut_download_resumes_with_range(
    registry: Registry, store: ImageStore, pushed
) -> None:
    image = pushed(small_image("cut", size=BLOB_SIZE), "test/cut:latest")
    layer = image.layers[0].blob
    with fault_proxy(registry.host) as proxy:
        proxy.add(Fault(path=layer.digest, kind="cut", after_bytes=250_000, times=2))
        client = make_client(proxy.host)
        try:
            with trio.fail_after(30):
                pulled = await pull(client, store, parse_reference(f"{proxy.host}/test/cut:latest"))
        finally:
            await client.aclose()
    assert pulled.layer_digests == [layer.digest]
    gets = [r for r in proxy.requests if layer.digest in r.path and r.method == "GET"]
    assert [r.range for r in gets] == [None, "bytes=250000-", "bytes=500000-"]
    assert gets[-1].status == 206
    assert proxy.body_bytes(layer.digest) == len(layer.data)  # not one byte twice
    assert proxy.body_bytes(layer.digest) < 2 * len(layer.data)
    assert client.stats["resumes"] == 2
    assert os.listdir(store.layout.ingest_dir) == []


async def test_corrupt_blob_is_refused_without_debris(
    registry: Registry, store: ImageStore, pushed
) -> None:
    image = pushed(small_image("bad", size=100_000), "test/bad:latest")
    layer = image.layers[0].blob
    with fault_proxy(registry.host) as proxy:
        proxy.add(Fault(path=layer.digest, kind="corrupt", times=10))
        client = make_client(proxy.host)
        try:
            with trio.fail_after(30), pytest.raises(DigestMismatch):
                await pull(client, store, parse_reference(f"{proxy.host}/test/bad:latest"))
        finally:
            await client.aclose()
    assert not store.content.has(layer.digest)
    assert os.listdir(store.layout.ingest_dir) == []
    assert store.list() == []
    assert await store.storage.list_layers() == []


async def test_5xx_and_429_are_retried(registry: Registry, store: ImageStore, pushed) -> None:
    image = pushed(small_image("flaky"), "test/flaky:latest")
    layer = image.layers[0].blob
    with fault_proxy(registry.host) as proxy:
        proxy.add(Fault(path="/manifests/latest", kind="status", status=503, times=2))
        proxy.add(Fault(path=layer.digest, kind="status", status=429, retry_after="1", times=1))
        proxy.add(Fault(path=layer.digest, kind="status", status=500, times=1))
        client = make_client(proxy.host)
        try:
            start = trio.current_time()
            with trio.fail_after(30):
                pulled = await pull(
                    client, store, parse_reference(f"{proxy.host}/test/flaky:latest")
                )
            elapsed = trio.current_time() - start
        finally:
            await client.aclose()
    assert pulled.layer_digests == [layer.digest]
    assert client.stats["retries"] == 4
    assert elapsed >= 1.0  # Retry-After: 1 was honoured


async def test_retries_are_bounded(registry: Registry, store: ImageStore, pushed) -> None:
    pushed(small_image("down"), "test/down:latest")
    with fault_proxy(registry.host) as proxy:
        proxy.add(Fault(path="/manifests/", kind="status", status=502, times=100))
        client = make_client(proxy.host)
        try:
            with trio.fail_after(30), pytest.raises(Exception, match="after 5 attempts.*502"):
                await pull(client, store, parse_reference(f"{proxy.host}/test/down:latest"))
        finally:
            await client.aclose()
    assert len([r for r in proxy.requests if "/manifests/" in r.path]) == 5


async def test_oversized_manifest_refused(registry: Registry, store: ImageStore, pushed) -> None:
    # docker-registry itself refuses manifests over 4 MiB, so the proxy serves the big one
    image = pushed(small_image("huge"), "test/huge:latest")
    manifest = json.loads(image.manifest.data)
    manifest["annotations"] = {"padding": "x" * (5 * 1024 * 1024)}
    with fault_proxy(registry.host) as proxy:
        proxy.add(
            Fault(
                path="/manifests/latest",
                kind="status",
                status=200,
                body=json.dumps(manifest).encode(),
                content_type="application/vnd.oci.image.manifest.v1+json",
            )
        )
        client = make_client(proxy.host)
        try:
            ref = parse_reference(f"{proxy.host}/test/huge:latest")
            with trio.fail_after(30), pytest.raises(ResourceExhausted, match="4194304-byte limit"):
                await pull(client, store, ref)
        finally:
            await client.aclose()
    assert store.list() == []


async def test_concurrent_pulls_share_one_download(
    registry: Registry, store: ImageStore, pushed
) -> None:
    base = make_layer({"base.bin": os.urandom(400_000)})
    one = make_image([base, make_layer({"one": b"1"})])
    two = make_image([base, make_layer({"two": b"2"})])
    pushed(one, "test/one:latest")
    pushed(two, "test/two:latest")
    with fault_proxy(registry.host) as proxy:
        client = make_client(proxy.host)
        try:
            with trio.fail_after(30):
                async with trio.open_nursery() as nursery:
                    for name in ("one", "two"):
                        ref = parse_reference(f"{proxy.host}/test/{name}:latest")
                        nursery.start_soon(pull, client, store, ref)
        finally:
            await client.aclose()
    base_gets = [r for r in proxy.requests if base.blob.digest in r.path and r.method == "GET"]
    assert len(base_gets) == 1
    assert {img.layer_digests[0] for img in store.list()} == {base.blob.digest}
    assert len(store.list()) == 2


async def test_blob_size_cap(registry: Registry, store: ImageStore, pushed) -> None:
    pushed(small_image("capped", size=50_000), "test/capped:latest")
    client = make_client(registry.host, max_blob_size=10_000)
    try:
        with trio.fail_after(30), pytest.raises(ResourceExhausted, match="max_blob_size"):
            await pull(client, store, parse_reference(f"{registry.host}/test/capped:latest"))
    finally:
        await client.aclose()
    assert store.list() == []
