"""Small test images built locally from /bin/busybox (Debian's busybox-static).

No network: a busybox root filesystem (busybox, its applet symlinks, /etc/passwd, /etc/group,
/tmp) packed as a layer, plus images with whiteouts and with many layers, written as an OCI
image layout (directory or tar) or as a docker-archive tar (what ``docker save`` writes).
Tars are reproducible (fixed mtimes and owners), so the same image always has the same ID.

    python -m engine.testing.images oci|oci-archive|docker-archive DEST \\
        [--image busybox|multilayer] [--layers N] [--compression gzip|zstd|none] [--name REF]
"""

from __future__ import annotations

import argparse
import functools
import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import attrs

from engine.images.types import host_architecture

BUSYBOX = Path("/bin/busybox")
FIXED_MTIME = 1_700_000_000  # reproducible layers
CREATED = "2024-01-01T00:00:00Z"
DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
PASSWD = (
    "root:x:0:0:root:/root:/bin/sh\n"
    "daemon:x:1:1:daemon:/usr/sbin:/bin/false\n"
    "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
)
GROUP = "root:x:0:\ndaemon:x:1:\nnobody:x:65534:\n"

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER_TYPES = {
    "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
    "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
    "none": "application/vnd.oci.image.layer.v1.tar",
}


@attrs.frozen
class TestImage:
    """What to build: a name, uncompressed layer tars (bottom first) and run defaults."""

    __test__ = False  # not a pytest class

    name: str
    layers: list[bytes]
    cmd: list[str] = ["sh"]
    env: list[str] = [DEFAULT_PATH]
    labels: dict[str, str] = attrs.field(factory=dict)
    config_extra: dict[str, Any] = attrs.field(factory=dict)  # more keys for "config", as is


@attrs.frozen
class Blob:
    media_type: str
    data: bytes
    digest: str


@attrs.frozen
class BuiltImage:
    """A built image: every blob, ready to write in any transport."""

    name: str
    manifest: Blob
    config: Blob
    layers: list[Blob]  # as stored (compressed per the option)
    diff_ids: list[str]
    uncompressed: list[bytes]

    @property
    def id(self) -> str:
        return self.config.digest


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# --- layer tars ----------------------------------------------------------------------------


class LayerWriter:
    """Builds one reproducible layer tar in memory."""

    def __init__(self) -> None:
        self._buf = io.BytesIO()
        self._tar = tarfile.open(fileobj=self._buf, mode="w", format=tarfile.PAX_FORMAT)

    def _info(self, name: str, kind: bytes, mode: int) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.type = kind
        info.mode = mode
        info.mtime = FIXED_MTIME
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        return info

    def dir(self, name: str, mode: int = 0o755) -> None:
        self._tar.addfile(self._info(name, tarfile.DIRTYPE, mode))

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        info = self._info(name, tarfile.REGTYPE, mode)
        info.size = len(data)
        self._tar.addfile(info, io.BytesIO(data))

    def symlink(self, name: str, target: str) -> None:
        info = self._info(name, tarfile.SYMTYPE, 0o777)
        info.linkname = target
        self._tar.addfile(info)

    def whiteout(self, path: str) -> None:
        """OCI whiteout: ``dir/.wh.name`` deletes ``dir/name`` of the layers below."""
        parent, _, base = path.rpartition("/")
        self.file(f"{parent}/.wh.{base}" if parent else f".wh.{base}", b"")

    def opaque(self, directory: str) -> None:
        """OCI opaque marker: hides everything the layers below had in ``directory``."""
        self.file(f"{directory}/.wh..wh..opq", b"")

    def bytes(self) -> bytes:
        self._tar.close()
        return self._buf.getvalue()


def _applets() -> list[str]:
    if not BUSYBOX.exists():
        raise FileNotFoundError(
            f"{BUSYBOX} is missing: install Debian's busybox-static to build test images"
        )
    out = subprocess.run([str(BUSYBOX), "--list-full"], check=True, capture_output=True)
    return sorted({line.strip() for line in out.stdout.decode().splitlines() if line.strip()})


@functools.cache
def busybox_rootfs_layer() -> bytes:
    """The busybox root filesystem as an uncompressed layer tar (cached per process)."""
    layer = LayerWriter()
    for d in ("bin", "sbin", "usr", "usr/bin", "usr/sbin", "etc", "dev", "proc", "sys", "var"):
        layer.dir(d)
    layer.dir("root", 0o700)
    layer.dir("tmp", 0o1777)
    layer.dir("home")
    layer.file("bin/busybox", BUSYBOX.read_bytes(), 0o755)
    for applet in _applets():
        if applet == "bin/busybox":
            continue
        # Relative targets: the link resolves inside any root the layer is unpacked into.
        layer.symlink(applet, os.path.relpath("bin/busybox", os.path.dirname(applet)))
    layer.file("etc/passwd", PASSWD.encode())
    layer.file("etc/group", GROUP.encode())
    return layer.bytes()


def whiteout_layers() -> list[bytes]:
    """Two layers on top of busybox: the second deletes ``/data/gone`` and makes ``/opq``
    opaque (so only ``/opq/c`` is left of it)."""
    first = LayerWriter()
    first.dir("data")
    first.file("data/keep", b"kept\n")
    first.file("data/gone", b"deleted by the next layer\n")
    first.dir("opq")
    first.file("opq/a", b"a\n")
    first.file("opq/b", b"b\n")
    second = LayerWriter()
    second.dir("data")
    second.whiteout("data/gone")
    second.dir("opq")
    second.opaque("opq")
    second.file("opq/c", b"c\n")
    return [first.bytes(), second.bytes()]


def numbered_layers(count: int) -> list[bytes]:
    """``count`` tiny layers, layer i adding ``/layers/<i>``."""
    out = []
    for i in range(count):
        layer = LayerWriter()
        layer.dir("layers")
        layer.file(f"layers/{i}", f"{i}\n".encode())
        out.append(layer.bytes())
    return out


# --- images --------------------------------------------------------------------------------


def busybox_image(name: str = "docker.io/library/busybox:latest") -> TestImage:
    return TestImage(name=name, layers=[busybox_rootfs_layer()])


def multilayer_image(name: str = "localhost/test/multilayer:latest") -> TestImage:
    return TestImage(name=name, layers=[busybox_rootfs_layer(), *whiteout_layers()])


def many_layers_image(count: int, name: str | None = None) -> TestImage:
    """``count`` layers in all: busybox plus ``count - 1`` tiny ones."""
    if count < 1:
        raise ValueError("an image needs at least one layer")
    return TestImage(
        name=name or f"localhost/test/layers{count}:latest",
        layers=[busybox_rootfs_layer(), *numbered_layers(count - 1)],
    )


def compress(data: bytes, compression: str) -> bytes:
    if compression == "gzip":
        return gzip.compress(data, compresslevel=6, mtime=0)
    if compression == "zstd":
        import zstandard

        return zstandard.ZstdCompressor().compress(data)
    if compression == "none":
        return data
    raise ValueError(f"unknown compression {compression!r}: use gzip, zstd or none")


def _json(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()


def build(image: TestImage, compression: str = "gzip") -> BuiltImage:
    diff_ids = [sha256(layer) for layer in image.layers]
    blobs = []
    for layer in image.layers:
        data = compress(layer, compression)
        blobs.append(Blob(LAYER_TYPES[compression], data, sha256(data)))
    config_doc: dict[str, Any] = {
        "architecture": host_architecture(),
        "os": "linux",
        "created": CREATED,
        "config": {"Env": list(image.env), "Cmd": list(image.cmd)},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [
            {"created": CREATED, "created_by": f"engine.testing.images layer {i}"}
            for i in range(len(image.layers))
        ],
    }
    if image.labels:
        config_doc["config"]["Labels"] = dict(image.labels)
    config_doc["config"].update(image.config_extra)
    config_data = _json(config_doc)
    config = Blob(OCI_CONFIG, config_data, sha256(config_data))
    manifest_data = _json(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": _descriptor(config),
            "layers": [_descriptor(b) for b in blobs],
        }
    )
    manifest = Blob(OCI_MANIFEST, manifest_data, sha256(manifest_data))
    return BuiltImage(image.name, manifest, config, blobs, diff_ids, list(image.layers))


def _descriptor(blob: Blob, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    desc: dict[str, Any] = {
        "mediaType": blob.media_type,
        "digest": blob.digest,
        "size": len(blob.data),
    }
    if annotations:
        desc["annotations"] = annotations
    return desc


# --- transports ----------------------------------------------------------------------------


def oci_layout_files(built: list[BuiltImage]) -> dict[str, bytes]:
    """The files of an OCI image layout holding ``built`` (path -> bytes)."""
    files: dict[str, bytes] = {"oci-layout": _json({"imageLayoutVersion": "1.0.0"})}
    manifests = []
    for image in built:
        for blob in (image.manifest, image.config, *image.layers):
            files["blobs/sha256/" + blob.digest.removeprefix("sha256:")] = blob.data
        tag = image.name.rpartition(":")[2] if ":" in image.name.rpartition("/")[2] else "latest"
        manifests.append(
            _descriptor(
                image.manifest,
                {
                    "org.opencontainers.image.ref.name": tag,
                    "io.containerd.image.name": image.name,
                },
            )
        )
    files["index.json"] = _json(
        {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}
    )
    return files


def docker_archive_files(built: list[BuiltImage]) -> dict[str, bytes]:
    """The files of a legacy ``docker save`` tar (path -> bytes). Layers are stored as the
    blobs are (``docker load`` accepts compressed ``layer.tar`` files too)."""
    files: dict[str, bytes] = {}
    entries = []
    repositories: dict[str, dict[str, str]] = {}
    for image in built:
        config_name = image.config.digest.removeprefix("sha256:") + ".json"
        files[config_name] = image.config.data
        layer_paths = []
        parent = ""
        for blob, diff_id in zip(image.layers, image.diff_ids, strict=True):
            layer_id = hashlib.sha256(f"{parent} {diff_id}".encode()).hexdigest()
            files[f"{layer_id}/layer.tar"] = blob.data
            files[f"{layer_id}/VERSION"] = b"1.0"
            files[f"{layer_id}/json"] = _json(
                {"id": layer_id, **({"parent": parent} if parent else {})}
            )
            layer_paths.append(f"{layer_id}/layer.tar")
            parent = layer_id
        repo, _, tag = image.name.rpartition(":")
        entries.append({"Config": config_name, "RepoTags": [image.name], "Layers": layer_paths})
        repositories.setdefault(repo, {})[tag] = parent
    files["manifest.json"] = _json(entries)
    files["repositories"] = _json(repositories)
    return files


def write_tar(dest: Path, files: dict[str, bytes]) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(dest, "w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(files):
            info = tarfile.TarInfo(name)
            info.size = len(files[name])
            info.mtime = FIXED_MTIME
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(files[name]))


def write_dir(dest: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        path = dest / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def write_oci_layout(
    dest: Path, images: list[TestImage], *, compression: str = "gzip", as_tar: bool = False
) -> list[BuiltImage]:
    """An OCI image layout: a directory at ``dest``, or a tar of one with ``as_tar``."""
    built = [build(image, compression) for image in images]
    files = oci_layout_files(built)
    (write_tar if as_tar else write_dir)(Path(dest), files)
    return built


def write_docker_archive(
    dest: Path, images: list[TestImage], *, compression: str = "gzip"
) -> list[BuiltImage]:
    """A ``docker save`` tar at ``dest``."""
    built = [build(image, compression) for image in images]
    write_tar(Path(dest), docker_archive_files(built))
    return built


# --- command line --------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m engine.testing.images", description="Write a busybox test image."
    )
    parser.add_argument("format", choices=["oci", "oci-archive", "docker-archive"])
    parser.add_argument("dest", type=Path)
    parser.add_argument("--image", choices=["busybox", "multilayer"], default="busybox")
    parser.add_argument("--layers", type=int, help="an N-layer image (busybox + N-1 tiny ones)")
    parser.add_argument("--compression", choices=sorted(LAYER_TYPES), default="gzip")
    parser.add_argument("--name", help="image reference, e.g. localhost/busybox:latest")
    args = parser.parse_args(argv)
    if args.layers:
        image = many_layers_image(args.layers, args.name)
    elif args.image == "multilayer":
        image = multilayer_image(args.name or "localhost/test/multilayer:latest")
    else:
        image = busybox_image(args.name or "docker.io/library/busybox:latest")
    if args.format == "docker-archive":
        built = write_docker_archive(args.dest, [image], compression=args.compression)
    else:
        built = write_oci_layout(
            args.dest, [image], compression=args.compression, as_tar=args.format == "oci-archive"
        )
    for b in built:
        print(
            json.dumps(
                {
                    "name": b.name,
                    "id": b.id,
                    "manifest": b.manifest.digest,
                    "layers": len(b.layers),
                    "dest": os.fspath(args.dest),
                }
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
