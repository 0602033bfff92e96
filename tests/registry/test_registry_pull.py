"""Pulls from a real docker-registry into the image store, layers unpacked."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import trio

from engine.errors import NotFound, Unavailable
from engine.images.pull import pull, select_manifest
from engine.images.store import ImageStore
from engine.images.types import DOCKER_MANIFEST, OCI_MANIFEST
from engine.plugins.registry.client import DistributionClient
from engine.reference import parse_reference
from engine.testing.registry import Registry

from .conftest import make_client, small_image, whiteout_image
from .oci_layouts import make_image, make_index, make_layer


def diff_dir(store: ImageStore, diff_id: str) -> Path:
    return store.storage.layer_dir(diff_id) / "diff"  # type: ignore[attr-defined]


@pytest.mark.parametrize("fmt, media_type", [("oci", OCI_MANIFEST), ("v2s2", DOCKER_MANIFEST)])
async def test_pull_oci_and_schema2(
    registry: Registry,
    client: DistributionClient,
    store: ImageStore,
    pushed,
    fmt: str,
    media_type: str,
) -> None:
    image = pushed(small_image(fmt), f"test/small:{fmt}", format=fmt)
    events: list[dict] = []
    with trio.fail_after(30):
        pulled = await pull(
            client,
            store,
            parse_reference(f"{registry.host}/test/small:{fmt}"),
            progress=events.append,
        )
    assert pulled.manifest_media_type == media_type
    assert pulled.diff_ids == [image.layers[0].diff_id]
    assert f"{registry.host}/test/small:{fmt}" in pulled.repo_tags
    assert store.get(f"{registry.host}/test/small:{fmt}").id == pulled.id
    hello = diff_dir(store, pulled.diff_ids[0]) / "etc" / "hello"
    assert hello.read_text() == f"hello from {fmt}\n"
    statuses = {e["status"] for e in events}
    assert {"Downloading", "Download complete", "Pull complete"} <= statuses
    # nothing left in ingest
    assert os.listdir(store.layout.ingest_dir) == []


async def test_pull_zstd_layer(
    registry: Registry, client: DistributionClient, store: ImageStore, pushed
) -> None:
    image = pushed(small_image("zstd", compression="zstd"), "test/zstd:latest", format="oci")
    with trio.fail_after(30):
        pulled = await pull(client, store, parse_reference(f"{registry.host}/test/zstd:latest"))
    assert pulled.layer_digests == [image.layers[0].blob.digest]
    assert (diff_dir(store, pulled.diff_ids[0]) / "etc/hello").read_text() == "hello from zstd\n"


async def test_pull_multilayer_with_whiteouts(
    registry: Registry, client: DistributionClient, store: ImageStore, pushed
) -> None:
    pushed(whiteout_image(), "test/wh:latest", format="v2s2")
    with trio.fail_after(30):
        pulled = await pull(client, store, parse_reference(f"{registry.host}/test/wh:latest"))
    assert len(pulled.diff_ids) == 2
    top = diff_dir(store, pulled.diff_ids[1])
    gone = top / "etc" / "gone"
    # OCI whiteouts became overlay whiteouts: a 0/0 character device, an opaque xattr
    assert stat.S_ISCHR(os.lstat(gone).st_mode) and os.lstat(gone).st_rdev == 0
    assert os.getxattr(top / "opq", "trusted.overlay.opaque") == b"y"
    assert (top / "opq" / "new").read_text() == "new\n"


def _platform_index(arches: list[tuple[str, str | None]]):
    images = []
    for arch, variant in arches:
        img = make_image(
            [make_layer({"arch": f"{arch}/{variant}".encode()})], arch=arch, variant=variant
        )
        platform = {"os": "linux", "architecture": arch}
        if variant:
            platform["variant"] = variant
        images.append((img, platform))
    return make_index(images), [img for img, _ in images]


async def test_pull_multi_platform_index(
    registry: Registry, client: DistributionClient, store: ImageStore, pushed
) -> None:
    index, images = _platform_index([("arm", "v7"), ("amd64", None), ("arm64", "v8")])
    pushed((index, images), "test/multi:latest", all_platforms=True)
    ref = parse_reference(f"{registry.host}/test/multi:latest")
    with trio.fail_after(30):
        amd = await pull(client, store, ref, platform="linux/amd64")
        arm = await pull(client, store, ref, platform="linux/arm64")
    assert amd.manifest_digest == images[1].manifest.digest
    assert amd.index_digest == index.digest
    assert arm.manifest_digest == images[2].manifest.digest
    assert (diff_dir(store, arm.diff_ids[0]) / "arch").read_text() == "arm64/v8"
    with pytest.raises(NotFound) as info:
        await pull(client, store, ref, platform="linux/s390x")
    assert "linux/arm/v7" in str(info.value) and "linux/amd64" in str(info.value)


def test_select_manifest_variants() -> None:
    index, images = _platform_index([("arm", "v6"), ("arm", "v7"), ("arm64", None)])
    assert select_manifest(index.data, "linux/arm/v7").digest == images[1].manifest.digest
    assert select_manifest(index.data, "linux/arm64/v8").digest == images[2].manifest.digest
    assert select_manifest(index.data, "linux/aarch64").digest == images[2].manifest.digest


async def test_pull_unknown_tag_is_not_found(
    registry: Registry, client: DistributionClient, store: ImageStore
) -> None:
    with trio.fail_after(30), pytest.raises(NotFound, match="MANIFEST_UNKNOWN|NAME_UNKNOWN"):
        await pull(client, store, parse_reference(f"{registry.host}/test/none:latest"))


async def test_plain_http_refused_unless_insecure(
    registry: Registry, store: ImageStore, pushed
) -> None:
    pushed(small_image(), "test/small:latest")
    strict = make_client()  # 127.0.0.1 not listed as insecure
    try:
        with trio.fail_after(30), pytest.raises(Unavailable, match="insecure-registries"):
            await pull(strict, store, parse_reference(f"{registry.host}/test/small:latest"))
    finally:
        await strict.aclose()
