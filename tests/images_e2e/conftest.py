"""Fixtures for image management end to end: a real engined, a real docker-registry, engctl
run as a subprocess (what a user types), test images built locally from busybox-static.

Every daemon, registry and proxy is stopped in a fixture's finally; a missing binary skips
locally and fails under CI=true (``require_binary``). Images are pushed into the registry
with skopeo, so a pull test does not depend on the engine's own push.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import attrs
import pytest

from engine.testing import images as test_images
from engine.testing.daemon import Daemon, in_ci, require_binary
from engine.testing.registry import Registry, push_layout, registry_server

BUSYBOX_TAG = "test/busybox:latest"
MULTI_TAG = "test/multilayer:latest"


@pytest.fixture(autouse=True)
def _needs_root_and_tools(request: pytest.FixtureRequest) -> None:
    if not {"make_daemon", "registry"} & set(request.fixturenames):
        return  # pure tests (the progress view) need neither
    if os.geteuid() != 0:
        if in_ci():
            pytest.fail("image end-to-end tests unpack layers on overlay and need root")
        pytest.skip("needs root (the daemon unpacks layers with their owners)")
    for binary in ("docker-registry", "skopeo"):
        require_binary(binary)


@attrs.frozen
class Layouts:
    """OCI layouts on disk, built once per session."""

    busybox: Path
    busybox_built: test_images.BuiltImage
    multilayer: Path
    multilayer_built: test_images.BuiltImage


@pytest.fixture(scope="session")
def layouts(tmp_path_factory: pytest.TempPathFactory) -> Layouts:
    base = tmp_path_factory.mktemp("layouts")
    (bb,) = test_images.write_oci_layout(base / "busybox", [test_images.busybox_image()])
    (ml,) = test_images.write_oci_layout(base / "multi", [test_images.multilayer_image()])
    return Layouts(base / "busybox", bb, base / "multi", ml)


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    with registry_server(tmp_path) as reg:
        yield reg


@pytest.fixture
def seeded(registry: Registry, layouts: Layouts) -> Registry:
    """The plain registry holding test/busybox and test/multilayer (they share a layer)."""
    push_layout(layouts.busybox, "latest", registry, BUSYBOX_TAG)
    push_layout(layouts.multilayer, "latest", registry, MULTI_TAG)
    return registry


DaemonFactory = Callable[..., Daemon]


@pytest.fixture
def make_daemon() -> Iterator[DaemonFactory]:
    """Start daemons (each with its own root); all are cleaned up at the end."""
    started: list[Daemon] = []

    def start(*extra_args: str, base: Path | None = None, prepare: Callable[[Daemon], None]
              | None = None) -> Daemon:
        daemon = Daemon(base, extra_args=list(extra_args))
        started.append(daemon)
        if prepare is not None:
            daemon.base.mkdir(parents=True, exist_ok=True)
            prepare(daemon)
        return daemon.start()

    try:
        yield start
    finally:
        for daemon in started:
            daemon.cleanup()


@pytest.fixture
def daemon(make_daemon: DaemonFactory, seeded: Registry) -> Daemon:
    """An engined that may talk plain HTTP to the seeded registry."""
    return make_daemon("--insecure-registry", seeded.host)
