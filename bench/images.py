"""Test images, built locally (no internet): busybox, and the "large" pull image (busybox plus
data layers of random and base64 text files, like peers/images.sh but without debootstrap),
written as OCI layouts and pushed to the local registry with skopeo as Docker schema2."""

from __future__ import annotations

import base64
import io
import json
import random
import subprocess
import tarfile
from pathlib import Path

import attrs

from bench.timing import run_quiet
from engine.testing import images as ti

BUSYBOX_REPO = "bench/busybox"
LARGE_REPO = "bench/large"


@attrs.frozen
class LargeSpec:
    """Each data layer: ``random_mib`` of incompressible 4 MiB files plus ``text_files`` base64
    files of 48 KiB (compress to about 3/4). Defaults give ~51 MB gzip per layer, ~205 MB in
    all with 4 data layers and busybox: the issue's ~200 MB, 5-layer image."""

    data_layers: int = 4
    random_mib: int = 40
    text_files: int = 250


def data_layer(index: int, spec: LargeSpec) -> bytes:
    rng = random.Random(index)  # reproducible: the same spec always gives the same digests
    layer = ti.LayerWriter()
    top = f"data/layer{index}"
    for d in ("data", top, f"{top}/bin", f"{top}/text"):
        layer.dir(d)
    for n in range(spec.random_mib // 4):
        layer.file(f"{top}/bin/blob{n}", rng.randbytes(4 << 20))
    for n in range(spec.text_files):
        layer.file(f"{top}/text/t{n:04d}", base64.encodebytes(rng.randbytes(36 << 10)))
    return layer.bytes()


def large_image(spec: LargeSpec) -> ti.TestImage:
    layers = [ti.busybox_rootfs_layer(), *(data_layer(i, spec) for i in range(1, spec.data_layers + 1))]
    return ti.TestImage(name=f"{LARGE_REPO}:latest", layers=layers)


@attrs.define
class BuiltImages:
    busybox_layout: Path
    busybox_archive: Path  # docker-archive tar, for `engctl load` if pulling is broken
    large_layout: Path
    large_info: dict[str, object]


def build_all(dest: Path, spec: LargeSpec, busybox_ref: str) -> BuiltImages:
    """``busybox_ref`` names the image in the docker-archive (the registry's name for it)."""
    bb = ti.busybox_image(busybox_ref)
    ti.write_oci_layout(dest / "busybox", [bb])
    ti.write_docker_archive(dest / "busybox.tar", [bb])
    built = ti.write_oci_layout(dest / "large", [large_image(spec)])[0]
    info = {
        "layers": len(built.layers),
        "gzip_bytes": sum(len(b.data) for b in built.layers),
        "tar_bytes": sum(len(u) for u in built.uncompressed),
        "manifest_oci": built.manifest.digest,
    }
    return BuiltImages(dest / "busybox", dest / "busybox.tar", dest / "large", info)


def push(layout: Path, ref: str) -> None:
    """skopeo copy as Docker schema2, the format docker and podman pull most often."""
    run_quiet(["skopeo", "copy", "-q", "--dest-tls-verify=false", "--format", "v2s2",
               f"oci:{layout}:latest", f"docker://{ref}"], timeout=300)


def blob_urls(registry: str, repo: str, tag: str = "latest") -> list[str]:
    """The config and layer blob URLs of a schema2 manifest (for the curl floor)."""
    out = subprocess.run(
        ["curl", "-fsS", "-H", "Accept: application/vnd.docker.distribution.manifest.v2+json",
         f"http://{registry}/v2/{repo}/manifests/{tag}"],
        capture_output=True, check=True, timeout=30).stdout
    m = json.loads(out)
    digests = [m["config"]["digest"], *(layer["digest"] for layer in m["layers"])]
    return [f"http://{registry}/v2/{repo}/blobs/{d}" for d in digests]


def unpack_busybox_rootfs(dest: Path) -> None:
    """The busybox layer extracted as a plain directory: the raw runtimes' bundle rootfs."""
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(ti.busybox_rootfs_layer())) as tar:
        tar.extractall(dest, filter="tar")
