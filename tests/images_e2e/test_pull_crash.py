"""SIGKILL of engined in the middle of a pull: no partial image afterwards, and the next pull
reuses the verified blobs and resumes the interrupted one with a Range request."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.testing import images as test_images
from engine.testing.daemon import Daemon
from engine.testing.registry import ProxiedRequest, Registry, push_layout

from .conftest import DaemonFactory
from .e2e_helpers import ENGCTL, blob_files, ingest_files, ok
from .stall_proxy import StallProxy

MiB = 1024 * 1024
BIG = 12 * MiB
STALL_AT = 5 * MiB + 4321  # not on a write-buffer boundary: the tail is lost with the daemon


def _random_layer(name: str, size: int) -> bytes:
    layer = test_images.LayerWriter()
    layer.dir("data")
    layer.file(f"data/{name}", os.urandom(size))
    return layer.bytes()


@pytest.fixture
def big_image(tmp_path: Path, registry: Registry) -> test_images.BuiltImage:
    image = test_images.TestImage(
        name="localhost/test/big:latest",
        layers=[
            test_images.busybox_rootfs_layer(),
            _random_layer("a", 3 * MiB),
            _random_layer("b", BIG),
            _random_layer("c", 2 * MiB),
        ],
    )
    # gzip: skopeo would compress plain tar layers on the way, changing their digests
    (built,) = test_images.write_oci_layout(tmp_path / "big", [image], compression="gzip")
    push_layout(tmp_path / "big", "latest", registry, "test/big:latest")
    return built


@pytest.fixture
def proxy(registry: Registry) -> Iterator[StallProxy]:
    proxy = StallProxy(registry.host)
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.stop()


def _wait_for(condition: object, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _blob_gets(requests: list[ProxiedRequest], digest: str) -> list[ProxiedRequest]:
    return [r for r in requests if r.method == "GET" and r.path.endswith(f"/blobs/{digest}")]


def test_sigkill_mid_pull_then_resume(
    make_daemon: DaemonFactory, proxy: StallProxy, big_image: test_images.BuiltImage
) -> None:
    big = big_image.layers[2]
    others = [big_image.config, *big_image.layers[:2], big_image.layers[3]]
    stall = proxy.stall(f"/blobs/{big.digest}", STALL_AT)
    daemon = make_daemon("--insecure-registry", proxy.host)
    ref = f"{proxy.host}/test/big:latest"
    partial_name = big.digest.removeprefix("sha256:") + ".partial"

    env = {**os.environ, "ENGINE_HOST": daemon.host}
    puller = subprocess.Popen([*ENGCTL, "pull", ref], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        assert stall.reached.wait(30), "the big layer's download never started"
        _wait_for(lambda: {b.digest for b in others} <= blob_files(daemon),
                  "the other blobs to be verified and stored")
        _wait_for(lambda: ingest_files(daemon).get(partial_name, 0) >= MiB,
                  "the big layer's partial file")
        daemon.kill9()
        _, err = puller.communicate(timeout=30)
    finally:
        if puller.poll() is None:
            puller.send_signal(signal.SIGKILL)
            puller.wait(10)
    assert puller.returncode == 125 and "daemon" in err

    have = ingest_files(daemon)[partial_name]
    assert 0 < have < STALL_AT <= big.data.__len__()
    assert big.data[:have] == (daemon.root / "content/ingest" / partial_name).read_bytes()[:have]

    daemon.start()  # same root: reconcile runs
    assert daemon.call("image.list") == [], "no half-pulled image is visible"
    assert ingest_files(daemon) == {partial_name: have}, "the resumable partial is kept"
    assert {b.digest for b in others} <= blob_files(daemon), "verified blobs are kept"

    out = ok(daemon, "pull", ref)
    assert f"Digest: {big_image.manifest.digest}" in out
    (image,) = daemon.call("image.list")
    assert image["Id"] == big_image.id
    assert ingest_files(daemon) == {}, "nothing left in ingest"

    for blob in others:
        assert len(_blob_gets(proxy.requests, blob.digest)) == 1, f"{blob.digest} refetched"
    first, second = _blob_gets(proxy.requests, big.digest)
    assert first.range is None and first.body_bytes_sent == STALL_AT
    assert second.range == f"bytes={have}-" and second.status == 206
    assert second.body_bytes_sent == len(big.data) - have

    # the container layer content is the pulled one
    info = daemon.call("image.inspect", id=ref)
    assert info["RootFS"]["Layers"] == big_image.diff_ids


def test_a_corrupt_partial_is_refetched_whole(
    make_daemon: DaemonFactory, registry: Registry, proxy: StallProxy,
    big_image: test_images.BuiltImage,
) -> None:
    """A partial whose bytes are wrong (disk trouble, a registry that changed the blob) makes
    the resumed download fail verification: the pull starts that blob over, once."""
    daemon: Daemon = make_daemon("--insecure-registry", proxy.host)
    big = big_image.layers[2]
    partial = daemon.root / "content" / "ingest" / (big.digest.removeprefix("sha256:")
                                                     + ".partial")
    partial.write_bytes(b"\0" * (2 * MiB))

    ok(daemon, "pull", "-q", f"{proxy.host}/test/big:latest")
    gets = _blob_gets(proxy.requests, big.digest)
    assert [g.range for g in gets] == [f"bytes={2 * MiB}-", None]
    assert gets[1].body_bytes_sent == len(big.data)
    assert ingest_files(daemon) == {}
