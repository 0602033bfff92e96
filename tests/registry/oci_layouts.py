"""Tiny OCI image layouts built in Python for the registry tests.

Layers are made with tarfile (gzip or zstd), configs and manifests by hand, so a test can ask
for exactly the shape it needs: several layers, whiteouts, zstd, a multi-platform index.
Push them with ``engine.testing.registry.push_layout`` (skopeo).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path

import attrs
import zstandard

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER_TYPES = {
    "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
    "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
}

# path -> file content; a path ending in "/" is a directory
Files = dict[str, bytes]


@attrs.frozen
class Blob:
    media_type: str
    data: bytes

    @property
    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.data).hexdigest()

    def descriptor(self, **extra: object) -> dict[str, object]:
        return {
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": len(self.data),
            **extra,
        }


@attrs.frozen
class Layer:
    blob: Blob
    diff_id: str


def make_layer(files: Files, compression: str = "gzip") -> Layer:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path, content in sorted(files.items()):
            info = tarfile.TarInfo(path.rstrip("/"))
            info.mtime = 1_700_000_000
            if path.endswith("/"):
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                tar.addfile(info)
            else:
                info.size = len(content)
                info.mode = 0o644
                tar.addfile(info, io.BytesIO(content))
    tar_bytes = raw.getvalue()
    if compression == "gzip":
        data = gzip.compress(tar_bytes, mtime=0)
    else:
        data = zstandard.ZstdCompressor().compress(tar_bytes)
    diff_id = "sha256:" + hashlib.sha256(tar_bytes).hexdigest()
    return Layer(Blob(LAYER_TYPES[compression], data), diff_id)


@attrs.frozen
class Image:
    manifest: Blob
    config: Blob
    layers: list[Layer]

    def blobs(self) -> list[Blob]:
        return [self.manifest, self.config, *(layer.blob for layer in self.layers)]


def make_image(
    layers: list[Layer],
    *,
    arch: str = "amd64",
    variant: str | None = None,
    cmd: list[str] | None = None,
) -> Image:
    config = {
        "architecture": arch,
        "os": "linux",
        "config": {"Cmd": cmd or ["sh"], "Env": ["PATH=/usr/bin:/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
        "history": [{"created_by": f"layer {i}"} for i in range(len(layers))],
    }
    if variant:
        config["variant"] = variant
    config_blob = Blob(OCI_CONFIG, json.dumps(config, sort_keys=True).encode())
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config_blob.descriptor(),
        "layers": [layer.blob.descriptor() for layer in layers],
    }
    return Image(Blob(OCI_MANIFEST, json.dumps(manifest).encode()), config_blob, layers)


def make_index(images: list[tuple[Image, dict[str, str]]]) -> Blob:
    """An OCI index of ``(image, platform)`` pairs."""
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [img.manifest.descriptor(platform=platform) for img, platform in images],
    }
    return Blob(OCI_INDEX, json.dumps(index).encode())


def write_layout(directory: Path, tags: dict[str, Image | tuple[Blob, list[Image]]]) -> Path:
    """An OCI image layout holding each tag (an image, or an index with its images)."""
    blobs_dir = directory / "blobs" / "sha256"
    blobs_dir.mkdir(parents=True, exist_ok=True)
    (directory / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    entries = []
    for tag, target in tags.items():
        if isinstance(target, Image):
            top, blobs = target.manifest, target.blobs()
        else:
            top, images = target
            blobs = [top, *(b for img in images for b in img.blobs())]
        for blob in blobs:
            (blobs_dir / blob.digest.removeprefix("sha256:")).write_bytes(blob.data)
        entries.append(top.descriptor(annotations={"org.opencontainers.image.ref.name": tag}))
    (directory / "index.json").write_text(
        json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries})
    )
    return directory
