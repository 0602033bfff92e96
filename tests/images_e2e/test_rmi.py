"""engctl rmi: refused while a container uses the image, -f forces; only blobs and layers
that no other image references are freed (checked on disk)."""

from __future__ import annotations

import json

from engine.testing.daemon import Daemon
from engine.testing.registry import Registry

from .conftest import BUSYBOX_TAG, MULTI_TAG, Layouts
from .e2e_helpers import blob_files, engctl, ok


def _driver_layers(daemon: Daemon) -> set[str]:
    """The overlay driver's unpacked layers, read from its directory (one dir per layer)."""
    return {
        d.name
        for d in (daemon.root / "storage").glob("*/layers/*")
        if len(d.name) == 64 and all(c in "0123456789abcdef" for c in d.name)
    }


def test_rmi_frees_only_unshared_blobs(daemon: Daemon, seeded: Registry,
                                       layouts: Layouts) -> None:
    bb, ml = f"{seeded.host}/{BUSYBOX_TAG}", f"{seeded.host}/{MULTI_TAG}"
    ok(daemon, "pull", "-q", bb)
    ok(daemon, "pull", "-q", ml)
    bb_built, ml_built = layouts.busybox_built, layouts.multilayer_built
    shared = bb_built.layers[0].digest
    assert ml_built.layers[0].digest == shared, "the test images share the busybox layer"
    every = {b.digest for b in (bb_built.manifest, bb_built.config, *bb_built.layers,
                                ml_built.manifest, ml_built.config, *ml_built.layers)}
    assert blob_files(daemon) == every
    layers_before = _driver_layers(daemon)
    assert len(layers_before) == 3

    out = ok(daemon, "rmi", ml).splitlines()
    assert f"Untagged: {ml}" in out and f"Deleted: {ml_built.id}" in out
    bb_blobs = {bb_built.manifest.digest, bb_built.config.digest, shared}
    assert blob_files(daemon) == bb_blobs, "the shared layer stays; the rest is freed"
    assert len(_driver_layers(daemon)) == 1

    missing = engctl(daemon, "rmi", ml)
    assert missing.code == 1 and "no such image" in missing.err


def test_rmi_refused_while_a_container_uses_the_image(daemon: Daemon, seeded: Registry,
                                                      layouts: Layouts) -> None:
    bb = f"{seeded.host}/{BUSYBOX_TAG}"
    ok(daemon, "pull", "-q", bb)
    image_id = layouts.busybox_built.id
    created = daemon.call("container.create", image=bb, cmd=["true"], name="user-of-image")
    container_id = created["Id"]

    refused = engctl(daemon, "rmi", bb)
    assert refused.code == 1
    assert "container" in refused.err and "force" in refused.err
    by_id = engctl(daemon, "rmi", image_id)
    assert by_id.code == 1 and "container" in by_id.err
    assert ok(daemon, "images", "-q").split() == [image_id[7:19]]

    forced = ok(daemon, "rmi", "-f", bb)
    assert f"Untagged: {bb}" in forced and "Deleted" not in forced
    # the container still needs the image: it stays, dangling, and so do its blobs
    (info,) = json.loads(ok(daemon, "image", "inspect", image_id))
    assert info["RepoTags"] == []
    assert layouts.busybox_built.layers[0].digest in blob_files(daemon)
    ok(daemon, "image", "prune", "-f")
    assert ok(daemon, "images", "-q").split() == [image_id[7:19]], "in use: not pruned"

    daemon.call("container.remove", id=container_id, force=True)
    pruned = ok(daemon, "image", "prune", "-f")
    assert f"Deleted: {image_id}" in pruned
    assert blob_files(daemon) == set()
    assert _driver_layers(daemon) == set()
