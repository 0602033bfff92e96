"""Local image transports: ``docker load``/``save`` archives, OCI image layouts, ``import``.

* docker-archive: a tar with ``manifest.json`` (``[{Config, RepoTags, Layers}]``), the config
  and one tar per layer (uncompressed as ``docker save`` writes them; compressed ones are
  accepted). There is no manifest in it: one is built for the layers found.
* OCI image layout: ``oci-layout``, ``index.json`` and ``blobs/sha256/<hex>``, as a directory
  or a tar of one. Names come from the ``io.containerd.image.name`` annotation, else
  ``org.opencontainers.image.ref.name``.

Every blob is checked against its digest while it goes into the content store, and the
images of one archive are recorded all together or not at all. A failed load removes the
blobs it stored (unless an image uses them).
"""

from __future__ import annotations

import datetime
import json
import os
import re
import shutil
import stat
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import trio

from engine.compression import decompress_errors, open_decompressed, sniff_file
from engine.errors import DigestMismatch, InvalidArgument, NotFound, disk_full, no_space
from engine.images import types as t
from engine.images.archive_files import (
    ArchiveFiles,
    DirFiles,
    TarFiles,
    file_sha256,
    read_small,
)
from engine.images.changes import apply_changes
from engine.images.content import sha256_digest
from engine.images.records import Image, scratch_dir
from engine.images.store import ImageStore, NewImage
from engine.reference import Reference, parse_reference

FORMATS = ("docker-archive", "oci", "oci-archive")
_HEX_NAME = re.compile(r"(?:^|/)([a-f0-9]{64})(?:\.json)?$")


@attrs.define
class _Loader:
    """Blocking loader state: what it stored, so a failure can take it back."""

    store: ImageStore
    files: ArchiveFiles
    held: list[str] = attrs.field(factory=list)  # leased, and discarded if the load fails
    # docker-archive layers by name: one file may serve several images (moved on first use)
    layers: dict[str, dict[str, Any]] = attrs.field(factory=dict)

    def hold(self, digest: str) -> None:
        trio.from_thread.run_sync(self.store.hold, [digest])
        self.held.append(digest)

    def put_file(self, name: str, digest: str, size: int | None) -> None:
        """Copy (or move, for our scratch copies) an archive file into the content store,
        verified against ``digest`` and ``size``."""
        content = self.store.content
        self.hold(digest)
        if content.has(digest):
            return
        source = self.files.path(name)
        partial = content.ingest_dir / f"{digest.removeprefix('sha256:')}.{os.getpid()}.load"
        if self.files.owned(name):
            os.replace(source, partial)  # our scratch copy: move it, no second copy
        else:
            shutil.copyfile(source, partial)
        try:
            content.commit(partial, digest, size)
        except DigestMismatch as e:
            raise DigestMismatch(f"{self.files.origin}: {name!r}: {e.message}") from None
        finally:
            partial.unlink(missing_ok=True)

    def put_bytes(self, data: bytes, digest: str | None = None) -> str:
        actual = sha256_digest(data)
        if digest is not None and actual != digest:
            raise DigestMismatch(
                f"{self.files.origin}: content does not match its digest: expected {digest}, "
                f"got {actual}"
            )
        self.hold(actual)
        self.store.content.write(data, actual)
        return actual


# --- load ----------------------------------------------------------------------------------


async def load(store: ImageStore, path: Path | str) -> list[Image]:
    """``docker load``: a docker-archive tar, an OCI layout directory or an OCI layout tar
    (gzip-compressed tars too). Returns the images loaded."""
    path = Path(path)
    scratch = await trio.to_thread.run_sync(scratch_dir, store.layout.images_dir)
    loader: _Loader | None = None
    loaded = False
    try:
        if await trio.to_thread.run_sync(_is_fifo, path):
            path = await copy_fifo(path, scratch / "from-fifo.tar")
        loader = await trio.to_thread.run_sync(_open, store, path, scratch)
        specs = await trio.to_thread.run_sync(_read_specs, loader)
        images = await store.add_images(specs)
        loaded = True
        return images
    finally:
        await trio.to_thread.run_sync(shutil.rmtree, scratch, True)
        if loader is not None:
            store.release(loader.held)  # first: our own lease would keep the blobs
            if not loaded:
                with trio.CancelScope(shield=True):
                    await store.discard_unreferenced(loader.held)


def _is_fifo(path: Path) -> bool:
    try:
        return stat.S_ISFIFO(path.stat().st_mode)
    except OSError:
        return False  # _open says what is wrong with it


FIFO_CHUNK = 1024 * 1024


async def copy_fifo(fifo: Path, target: Path) -> Path:
    """Read a named pipe (``load -i <fifo>``) into ``target``; return ``target``.

    A blocking open or read of a pipe in a worker thread could not be cancelled: a daemon
    told to stop while nobody writes would stop serving and never exit. So the pipe is
    opened non-blocking and read on the event loop when it is readable; only the file
    writes go to a thread."""
    fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        out = await trio.to_thread.run_sync(lambda: open(target, "wb"))
        try:
            while True:
                # Linux reports no hang-up on a pipe no writer has opened yet: this waits
                # for the first writer, then for data, then for its close (EOF).
                await trio.lowlevel.wait_readable(fd)
                try:
                    data = os.read(fd, FIFO_CHUNK)
                except BlockingIOError:
                    continue
                if not data:
                    return target
                await trio.to_thread.run_sync(out.write, data)
        finally:
            out.close()
    finally:
        os.close(fd)


def _open(store: ImageStore, path: Path, scratch: Path) -> _Loader:
    if path.is_dir():
        return _Loader(store, DirFiles(path))
    if not path.exists():
        raise NotFound(f"{path} does not exist: give a docker-archive or OCI layout path")
    return _Loader(store, TarFiles(path, scratch))


def _read_specs(loader: _Loader) -> list[NewImage]:
    names = loader.files.names()
    if "manifest.json" in names:
        return _docker_archive_specs(loader)
    if "index.json" in names:
        return _oci_specs(loader)
    raise InvalidArgument(
        f"{loader.files.origin} is neither a docker-archive (no manifest.json) nor an OCI "
        "image layout (no index.json)"
    )


def _json(loader: _Loader, name: str) -> Any:
    data = read_small(loader.files, name)
    try:
        return json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InvalidArgument(f"{loader.files.origin}: {name!r} is not valid JSON ({e})") from None


# --- docker-archive ------------------------------------------------------------------------


def _docker_archive_specs(loader: _Loader) -> list[NewImage]:
    entries = _json(loader, "manifest.json")
    if not isinstance(entries, list) or not entries:
        raise InvalidArgument(f"{loader.files.origin}: manifest.json lists no images")
    return [_docker_entry(loader, entry) for entry in entries]


def _docker_entry(loader: _Loader, entry: Any) -> NewImage:
    origin = loader.files.origin
    if not isinstance(entry, dict) or not isinstance(entry.get("Config"), str):
        raise InvalidArgument(f"{origin}: manifest.json entry {entry!r} has no Config")
    config_bytes = read_small(loader.files, entry["Config"])
    config_digest = sha256_digest(config_bytes)
    named = _HEX_NAME.search(entry["Config"])
    if named and "sha256:" + named.group(1) != config_digest:
        raise DigestMismatch(
            f"{origin}: config {entry['Config']!r} has digest {config_digest}; the archive is "
            "corrupt or was tampered with"
        )
    config = t.parse_config(config_bytes)
    layer_names = entry.get("Layers") or []
    if len(layer_names) != len(config.rootfs.diff_ids):
        raise InvalidArgument(
            f"{origin}: {len(layer_names)} layers listed but the config has "
            f"{len(config.rootfs.diff_ids)} diff_ids"
        )
    layers = [
        _docker_layer(loader, name, diff_id)
        for name, diff_id in zip(layer_names, config.rootfs.diff_ids, strict=True)
    ]
    oci = any(d["mediaType"] == t.OCI_LAYER_ZSTD for d in layers)
    manifest = {
        "schemaVersion": 2,
        "mediaType": t.OCI_MANIFEST if oci else t.DOCKER_MANIFEST,
        "config": {
            "mediaType": t.OCI_CONFIG if oci else t.DOCKER_CONFIG,
            "digest": config_digest,
            "size": len(config_bytes),
        },
        "layers": layers,
    }
    manifest_bytes = json.dumps(manifest, indent=3).encode()
    loader.put_bytes(config_bytes)
    loader.put_bytes(manifest_bytes)
    tags = [_parse_name(origin, n) for n in entry.get("RepoTags") or []]
    return NewImage(
        manifest_bytes, str(manifest["mediaType"]), config_bytes, tags, repo_digests=False
    )


def _docker_layer(loader: _Loader, name: str, diff_id: str) -> dict[str, Any]:
    if name in loader.layers:
        return loader.layers[name]
    path = loader.files.path(name)
    digest, size = file_sha256(path)
    kind = sniff_file(path)
    if kind == "none" and digest != diff_id:
        raise DigestMismatch(
            f"{loader.files.origin}: layer {name!r} has digest {digest} but the config says "
            f"{diff_id}; the archive is corrupt or was tampered with"
        )
    media_type = {"none": t.DOCKER_LAYER, "gzip": t.DOCKER_LAYER_GZIP, "zstd": t.OCI_LAYER_ZSTD}
    loader.put_file(name, digest, size)
    loader.layers[name] = {"mediaType": media_type[kind], "digest": digest, "size": size}
    return loader.layers[name]


def _parse_name(origin: str, name: str) -> Reference:
    try:
        return parse_reference(name)
    except InvalidArgument as e:
        raise InvalidArgument(f"{origin}: image name {name!r} is invalid: {e.message}") from None


# --- OCI layout ----------------------------------------------------------------------------


def _oci_specs(loader: _Loader) -> list[NewImage]:
    origin = loader.files.origin
    layout = _json(loader, "oci-layout")
    if not isinstance(layout, dict) or "imageLayoutVersion" not in layout:
        raise InvalidArgument(f"{origin}: oci-layout has no imageLayoutVersion")
    index = t.parse_manifest(read_small(loader.files, "index.json"), t.OCI_INDEX)
    assert isinstance(index, t.Index)
    if not index.manifests:
        raise InvalidArgument(f"{origin}: index.json lists no images")
    specs: dict[str, NewImage] = {}
    for desc in index.manifests:
        spec = _oci_image(loader, desc, _oci_names(origin, desc), None)
        key = sha256_digest(spec.manifest_bytes)
        if key in specs:  # the same image under several names: one spec, all the names
            spec = attrs.evolve(specs[key], names=specs[key].names + spec.names)
        specs[key] = spec
    return list(specs.values())


def _oci_names(origin: str, desc: t.Descriptor) -> list[Reference]:
    annotations = desc.annotations or {}
    name = annotations.get(t.ANNOTATION_CONTAINERD_NAME) or annotations.get(t.ANNOTATION_REF_NAME)
    return [_parse_name(origin, name)] if name else []


def _blob(loader: _Loader, desc: t.Descriptor) -> bytes:
    """A small blob (manifest, config) read and verified against its descriptor."""
    data = read_small(loader.files, _blob_name(desc.digest))
    if len(data) != desc.size:
        raise DigestMismatch(
            f"{loader.files.origin}: blob {desc.digest} is {len(data)} bytes, its descriptor "
            f"says {desc.size}"
        )
    loader.put_bytes(data, desc.digest)
    return data


def _blob_name(digest: str) -> str:
    algorithm, _, hex_digits = digest.partition(":")
    if algorithm != "sha256" or not re.fullmatch(r"[a-f0-9]{64}", hex_digits):
        raise InvalidArgument(f"unsupported or malformed digest {digest!r}")
    return f"blobs/sha256/{hex_digits}"


def _oci_image(
    loader: _Loader, desc: t.Descriptor, names: list[Reference], index_digest: str | None
) -> NewImage:
    data = _blob(loader, desc)
    parsed = t.parse_manifest(data, desc.media_type)
    if isinstance(parsed, t.Index):
        chosen = _choose_platform(loader.files.origin, parsed)
        return _oci_image(loader, chosen, names, desc.digest)
    config_bytes = _blob(loader, parsed.config)
    for layer in parsed.layers:
        loader.put_file(_blob_name(layer.digest), layer.digest, layer.size)
    return NewImage(
        data, parsed.media_type, config_bytes, names, index_digest=index_digest, repo_digests=False
    )


def _choose_platform(origin: str, index: t.Index) -> t.Descriptor:
    arch = t.host_architecture()
    images = [m for m in index.manifests if m.media_type in t.MANIFEST_TYPES]
    for m in images:
        if m.platform and m.platform.os == "linux" and m.platform.architecture == arch:
            return m
    if len(images) == 1 and images[0].platform is None:
        return images[0]
    raise NotFound(f"{origin}: the index has no linux/{arch} image")


# --- save ----------------------------------------------------------------------------------


async def save(
    store: ImageStore, refs: list[str], dest: Path | str, fmt: str = "docker-archive"
) -> None:
    """``docker save``: write images to ``dest`` as a docker-archive tar, an OCI layout
    directory (``oci``) or an OCI layout tar (``oci-archive``). Names given by name are
    written with the images; images given by ID get none (as docker does)."""
    if fmt not in FORMATS:
        raise InvalidArgument(f"unknown archive format {fmt!r}: use one of {', '.join(FORMATS)}")
    if not refs:
        raise InvalidArgument("save needs at least one image name or ID")
    chosen: dict[str, tuple[Image, list[str]]] = {}
    for ref in refs:
        image, parsed = store.resolve(ref)
        names = [str(parsed)] if parsed is not None and parsed.tag is not None else []
        old = chosen.get(image.id, (image, []))[1]
        chosen[image.id] = (image, old + [n for n in names if n not in old])
    dest = Path(dest)
    writer = {"docker-archive": _write_docker_archive, "oci": _write_oci, "oci-archive": _write_oci}
    await trio.to_thread.run_sync(writer[fmt], store, list(chosen.values()), dest, fmt)


def _tar_add(tar: tarfile.TarFile, name: str, source: Path | bytes) -> None:
    info = tarfile.TarInfo(name)
    info.mode = 0o644
    info.mtime = 0
    if isinstance(source, bytes):
        info.size = len(source)
        import io

        tar.addfile(info, io.BytesIO(source))
        return
    info.size = source.stat().st_size
    with open(source, "rb") as f:
        tar.addfile(info, f)


def _temp_beside(dest: Path) -> Path:
    return dest.with_name(f".{dest.name}.tmp-{os.getpid()}")


def _publish(temp: Path, dest: Path) -> None:
    if dest.exists() and dest.is_dir():
        if any(dest.iterdir()):
            raise InvalidArgument(f"{dest} is a directory that is not empty; choose a new path")
        dest.rmdir()
    os.replace(temp, dest)


def _write_docker_archive(
    store: ImageStore, chosen: list[tuple[Image, list[str]]], dest: Path, fmt: str
) -> None:
    temp = _temp_beside(dest)
    entries: list[dict[str, Any]] = []
    try:
        with tarfile.open(temp, "w", format=tarfile.PAX_FORMAT) as tar:
            written: set[str] = set()
            for image, names in chosen:
                config_name = image.id.removeprefix("sha256:") + ".json"
                _tar_add(tar, config_name, store.content.read(image.id))
                layers = []
                for blob, diff_id in zip(image.layer_digests, image.diff_ids, strict=True):
                    layer_name = diff_id.removeprefix("sha256:") + "/layer.tar"
                    if layer_name not in written:
                        _add_uncompressed(tar, layer_name, store.content.path(blob), dest)
                        written.add(layer_name)
                    layers.append(layer_name)
                tags = [parse_reference(n).familiar() for n in names]
                entries.append({"Config": config_name, "RepoTags": tags or None, "Layers": layers})
            _tar_add(tar, "manifest.json", json.dumps(entries).encode())
        os.replace(temp, dest)
    finally:
        temp.unlink(missing_ok=True)


def _add_uncompressed(tar: tarfile.TarFile, name: str, blob: Path, dest: Path) -> None:
    """docker-archive layers are plain tars whose digest is the diff_id."""
    if sniff_file(blob) == "none":
        _tar_add(tar, name, blob)
        return
    plain = dest.with_name(f".{dest.name}.layer-{os.getpid()}")
    try:
        with open_decompressed(blob) as src, open(plain, "wb") as out:
            shutil.copyfileobj(src, out, 1024 * 1024)
        _tar_add(tar, name, plain)
    finally:
        plain.unlink(missing_ok=True)


def _write_oci(
    store: ImageStore, chosen: list[tuple[Image, list[str]]], dest: Path, fmt: str
) -> None:
    files: dict[str, Path | bytes] = {"oci-layout": b'{"imageLayoutVersion":"1.0.0"}'}
    manifests = []
    for image, names in chosen:
        for digest in (image.manifest_digest, image.id, *image.layer_digests):
            files["blobs/sha256/" + digest.removeprefix("sha256:")] = store.content.path(digest)
        base = {
            "mediaType": image.manifest_media_type,
            "digest": image.manifest_digest,
            "size": store.content.size(image.manifest_digest),
        }
        for name in names or [""]:
            desc: dict[str, Any] = dict(base)
            if name:
                ref = parse_reference(name)
                desc["annotations"] = {
                    t.ANNOTATION_CONTAINERD_NAME: str(ref),
                    t.ANNOTATION_REF_NAME: ref.tag or "latest",
                }
            manifests.append(desc)
    files["index.json"] = json.dumps(
        {"schemaVersion": 2, "mediaType": t.OCI_INDEX, "manifests": manifests}
    ).encode()
    temp = _temp_beside(dest)
    try:
        if fmt == "oci-archive":
            with tarfile.open(temp, "w", format=tarfile.PAX_FORMAT) as tar:
                for name in sorted(files):
                    _tar_add(tar, name, files[name])
            os.replace(temp, dest)
        else:
            _write_layout_dir(temp, files)
            _publish(temp, dest)
    finally:
        if temp.is_dir():
            shutil.rmtree(temp, ignore_errors=True)
        else:
            temp.unlink(missing_ok=True)


def _write_layout_dir(root: Path, files: dict[str, Path | bytes]) -> None:
    for name, source in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(source, bytes):
            path.write_bytes(source)
        else:
            shutil.copyfile(source, path)


# --- import --------------------------------------------------------------------------------


async def import_rootfs(
    store: ImageStore,
    tar_path: Path | str,
    ref: str | None = None,
    *,
    changes: list[str] | None = None,
    message: str = "",
    now: Callable[[], datetime.datetime] | None = None,
) -> Image:
    """``docker import``: a root filesystem tarball (plain, gzip or zstd) becomes a
    one-layer image, named ``ref`` if given. ``changes`` are Dockerfile instructions
    (``CMD``, ``ENV``, ``WORKDIR``...)."""
    names = [parse_reference(ref)] if ref else []
    container_config = apply_changes({}, changes or [])
    created = (now or (lambda: datetime.datetime.now(datetime.UTC)))()
    scratch = await trio.to_thread.run_sync(scratch_dir, store.layout.images_dir)
    held: list[str] = []
    imported = False
    try:
        spec = await trio.to_thread.run_sync(
            _import_spec,
            store,
            Path(tar_path),
            scratch,
            container_config,
            created,
            message,
            names,
            held,
        )
        image = await store.add_image(
            spec.manifest_bytes,
            spec.manifest_media_type,
            spec.config_bytes,
            names,
            repo_digests=False,
        )
        imported = True
        return image
    finally:
        await trio.to_thread.run_sync(shutil.rmtree, scratch, True)
        store.release(held)  # first: our own lease would keep the blob
        if not imported:
            with trio.CancelScope(shield=True):
                await store.discard_unreferenced(held)


def _import_spec(
    store: ImageStore,
    tar_path: Path,
    scratch: Path,
    container_config: dict[str, Any],
    created: datetime.datetime,
    message: str,
    names: list[Reference],
    held: list[str],
) -> NewImage:
    if not tar_path.is_file():
        raise NotFound(f"{tar_path} does not exist or is not a file: give a rootfs tarball")
    plain = scratch / "layer.tar"
    try:
        with open_decompressed(tar_path) as src, open(plain, "wb") as out:
            shutil.copyfileobj(src, out, 1024 * 1024)
    except decompress_errors() + (OSError,) as e:
        if (full := no_space(e)) is not None:
            raise disk_full(full, plain) from None
        raise InvalidArgument(f"{tar_path}: cannot decompress ({e})") from None
    if not tarfile.is_tarfile(plain):
        raise InvalidArgument(f"{tar_path} is not a tar archive (plain, gzip or zstd)")
    diff_id, size = file_sha256(plain)
    trio.from_thread.run_sync(store.hold, [diff_id])
    held.append(diff_id)
    store.content.commit(plain, diff_id, size)
    stamp = created.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    history: dict[str, Any] = {"created": stamp, "created_by": "engine import"}
    if message:
        history["comment"] = message
    config: dict[str, Any] = {
        "architecture": t.host_architecture(),
        "os": "linux",
        "created": stamp,
        "config": container_config,
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [history],
    }
    config_bytes = json.dumps(config, separators=(",", ":"), sort_keys=True).encode()
    config_digest = sha256_digest(config_bytes)
    manifest_bytes = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": t.OCI_MANIFEST,
            "config": {
                "mediaType": t.OCI_CONFIG,
                "digest": config_digest,
                "size": len(config_bytes),
            },
            "layers": [{"mediaType": t.OCI_LAYER, "digest": diff_id, "size": size}],
        },
        separators=(",", ":"),
    ).encode()
    return NewImage(manifest_bytes, t.OCI_MANIFEST, config_bytes, names, repo_digests=False)
