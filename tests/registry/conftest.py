"""Fixtures for the registry tests: a real docker-registry on 127.0.0.1, a client, a store.

Every registry, proxy and token server is stopped in the fixture's finally (context
managers in engine.testing.registry). A missing docker-registry/skopeo/htpasswd skips
locally and fails under CI=true. Layers are only unpacked (no mounts), so nothing is
mounted by these tests.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import trio

from engine.images.content import ContentStore
from engine.images.store import ImageStore
from engine.plugins.registry.client import DistributionClient, RetryPolicy
from engine.plugins.registry.transport import RegistrySettings
from engine.plugins.storage_overlay.driver import OverlayDriver
from engine.store.layout import Layout
from engine.testing.daemon import in_ci
from engine.testing.registry import Registry, push_layout, registry_server

from .oci_layouts import Image, make_image, make_layer, write_layout


@pytest.fixture(autouse=True)
def _needs_root() -> None:
    if os.geteuid() != 0:
        if in_ci():
            pytest.fail("the registry tests unpack layers and need root")
        pytest.skip("needs root (layers are unpacked with their owners)")


@pytest.fixture
def layout(tmp_path: Path) -> Layout:
    layout = Layout(tmp_path / "root", tmp_path / "run")
    layout.ensure()
    return layout


@pytest.fixture
def content(layout: Layout) -> ContentStore:
    return ContentStore(layout.blobs_dir, layout.ingest_dir)


@pytest.fixture
def store(layout: Layout, content: ContentStore) -> ImageStore:
    return ImageStore(layout, content, OverlayDriver(layout, durable=False))


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    with registry_server(tmp_path) as reg:
        yield reg


def make_client(*insecure: str, **kwargs: object) -> DistributionClient:
    """A client with fast retries, so fault tests stay quick."""
    kwargs.setdefault("retry", RetryPolicy(attempts=5, base_delay=0.01, max_delay=0.05))
    settings = kwargs.pop("settings", None) or RegistrySettings(insecure=tuple(insecure))
    return DistributionClient(settings, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
async def client(registry: Registry) -> AsyncIterator[DistributionClient]:
    c = make_client(registry.host)
    try:
        yield c
    finally:
        with trio.CancelScope(shield=True):
            await c.aclose()


# --- test images ---------------------------------------------------------------------------


def small_image(tag: str = "one", *, compression: str = "gzip", size: int = 0) -> Image:
    files = {"etc/": b"", "etc/hello": f"hello from {tag}\n".encode()}
    if size:
        files["data.bin"] = os.urandom(size)  # incompressible: the blob is about `size`
    return make_image([make_layer(files, compression)])


def whiteout_image() -> Image:
    base = make_layer(
        {
            "etc/": b"",
            "etc/keep": b"keep\n",
            "etc/gone": b"gone\n",
            "opq/": b"",
            "opq/old": b"old\n",
        }
    )
    top = make_layer(
        {
            "etc/": b"",
            "etc/.wh.gone": b"",
            "opq/": b"",
            "opq/.wh..wh..opq": b"",
            "opq/new": b"new\n",
        }
    )
    return make_image([base, top])


@pytest.fixture
def pushed(tmp_path: Path, registry: Registry):
    """push(image, "repo:tag", format=None) -> Image: writes a layout and skopeo-pushes it."""
    counter = iter(range(1000))

    def push(
        image: Image | tuple,
        dest: str,
        *,
        format: str | None = None,
        all_platforms: bool = False,
        creds: tuple[str, str] | None = None,
        to: Registry | None = None,
    ) -> Image | tuple:
        directory = write_layout(tmp_path / f"layout-{next(counter)}", {"t": image})
        push_layout(
            directory,
            "t",
            to or registry,
            dest,
            format=format,
            all_platforms=all_platforms,
            creds=creds,
        )
        return image

    return push
