"""Pull an image from a registry into the image store.

Steps: resolve the manifest; if it is an index (or a Docker manifest list), choose the
platform's manifest; fetch the config (its diff_ids name the layers); fetch every layer
concurrently (the client's download limiter bounds how many at once; blobs already in the
content store are skipped, and two pulls sharing a layer download it once); hand everything
to ``ImageStore.add_image``, which records the image. With the overlay driver each layer is
unpacked while it downloads (``layer_stream``): the unpack is committed only after the blob
matched its digest and the unpacked tar its diff_id; layers that could not be streamed are
unpacked by ``add_image``. Schema1 manifests are converted on the way in (the layers are
hashed to fill in the config's diff_ids).

Durability: pulled blobs and layers are not fsynced one by one (see ``Writeback`` in
``engine.images.store``); the image record is.

Progress events are dicts ``{"id": short digest, "status": ..., "current": n, "total": n}``
with status "Already exists", "Downloading", "Verifying", "Download complete",
"Extracting", "Pull complete", passed to ``progress`` (which must not block).

Cancellation: cancelling a pull leaves verified blobs and resumable partial downloads in the
content store, never a half-recorded image (nor a half-unpacked layer: see cleanup_stale).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import platform as _platform
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from engine.compression import decompress_errors, open_decompressed
from engine.errgroup import unwrap_engine_errors
from engine.errors import EngineError, InvalidArgument, NotFound
from engine.images.content import ContentStore, sha256_digest
from engine.images.types import (
    DOCKER_CONFIG,
    DOCKER_LAYER_GZIP,
    DOCKER_MANIFEST,
    INDEX_TYPES,
    SCHEMA1_TYPES,
    Descriptor,
    Manifest,
    parse_config,
    parse_manifest,
)
from engine.plugin import LayerStream, RegistryClient, streaming_client

if TYPE_CHECKING:
    from engine.images.records import Image
    from engine.images.store import ImageStore
    from engine.reference import Reference

ProgressCallback = Callable[[dict[str, Any]], None]

# platform.machine() -> (GOARCH, variant), as containerd's platforms package normalises them
_MACHINE_ARCH: dict[str, tuple[str, str | None]] = {
    "x86_64": ("amd64", None),
    "amd64": ("amd64", None),
    "aarch64": ("arm64", "v8"),
    "arm64": ("arm64", "v8"),
    "armv7l": ("arm", "v7"),
    "armv6l": ("arm", "v6"),
    "i386": ("386", None),
    "i686": ("386", None),
    "ppc64le": ("ppc64le", None),
    "s390x": ("s390x", None),
    "riscv64": ("riscv64", None),
}


# --- platforms -------------------------------------------------------------------------------


def host_platform() -> str:
    arch, variant = _MACHINE_ARCH.get(_platform.machine().lower(), (_platform.machine(), None))
    return "/".join(p for p in ("linux", arch, variant) if p)


def parse_platform(text: str) -> tuple[str, str, str | None]:
    """``os/arch[/variant]`` -> parts, normalised (``aarch64`` -> ``arm64``...)."""
    parts = text.strip().lower().split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise InvalidArgument(
            f"invalid platform {text!r}: expected os/arch[/variant], e.g. linux/amd64"
        )
    os_name, arch = parts[0], parts[1]
    variant = parts[2] if len(parts) == 3 else None
    if arch in _MACHINE_ARCH:
        arch = _MACHINE_ARCH[arch][0]
    return os_name, arch, variant


def _norm_variant(arch: str, variant: str | None) -> str | None:
    return "v8" if arch == "arm64" and variant in (None, "") else (variant or None)


def select_manifest(index_bytes: bytes, wanted: str | None = None) -> Descriptor:
    """The index entry for ``wanted`` (default: this host). Raises NotFound listing what the
    index offers."""
    index = parse_manifest(index_bytes)
    want_os, want_arch, want_variant = parse_platform(wanted or host_platform())
    explicit_variant = wanted is not None and want_variant is not None
    offered: list[str] = []
    matches: list[Descriptor] = []
    for entry in getattr(index, "manifests", []):
        p = entry.platform
        if p is None or p.os == "unknown":  # attestation manifests carry os "unknown"
            continue
        offered.append("/".join(x for x in (p.os, p.architecture, p.variant) if x))
        if p.os != want_os or p.architecture != want_arch:
            continue
        variant = _norm_variant(p.architecture, p.variant)
        if explicit_variant and variant != _norm_variant(want_arch, want_variant):
            continue
        matches.append(entry)
    if not matches:
        target = "/".join(x for x in (want_os, want_arch, want_variant) if x)
        raise NotFound(
            f"no manifest for platform {target} in the image index; it offers: "
            f"{', '.join(offered) or 'nothing usable'} (choose one with --platform)"
        )
    # Prefer the variant this host would pick (e.g. arm/v7 over arm/v6 on armv7).
    best = _norm_variant(want_arch, want_variant)
    for entry in matches:
        if (
            entry.platform is not None
            and _norm_variant(entry.platform.architecture, entry.platform.variant) == best
        ):
            return entry
    return matches[0]


# --- progress --------------------------------------------------------------------------------


def _short(digest: str) -> str:
    return digest.removeprefix("sha256:")[:12]


class _Progress:
    def __init__(self, callback: ProgressCallback | None) -> None:
        self.callback = callback

    def emit(
        self, digest: str, status: str, current: int | None = None, total: int | None = None
    ) -> None:
        if self.callback is None:
            return
        event: dict[str, Any] = {"id": _short(digest), "status": status}
        if current is not None:
            event["current"] = current
        if total is not None:
            event["total"] = total
        self.callback(event)

    def downloading(self, digest: str) -> Callable[[int, int | None], None] | None:
        """A progress function for one download, emitting at most every
        ``_PROGRESS_INTERVAL`` seconds (and the last count): one event per MiB would keep the
        event loop busy with progress instead of bytes."""
        if self.callback is None:
            return None
        last = -_PROGRESS_INTERVAL

        def downloading(current: int, total: int | None) -> None:
            nonlocal last
            now = time.monotonic()
            if now - last >= _PROGRESS_INTERVAL or current == total:
                last = now
                self.emit(digest, "Downloading", current, total)

        return downloading


_PROGRESS_INTERVAL = 0.1  # seconds


# --- pull ------------------------------------------------------------------------------------


async def pull(
    client: RegistryClient,
    store: ImageStore,
    ref: Reference,
    *,
    platform: str | None = None,
    progress: ProgressCallback | None = None,
) -> Image:
    """Pull ``ref`` into ``store`` and return the recorded image.

    Errors: NotFound (no such image, or no manifest for the platform), PermissionDenied,
    DigestMismatch, ResourceExhausted, UnsafeContent (from unpacking), Unavailable."""
    events = _Progress(progress)
    data, media_type, digest = await client.get_manifest(ref)
    index_digest: str | None = None
    if media_type in INDEX_TYPES:
        await trio.to_thread.run_sync(store.content.write, data, digest)
        index_digest = digest
        entry = select_manifest(data, platform)
        data, media_type, digest = await client.get_manifest(ref.with_digest(entry.digest))
    if media_type in SCHEMA1_TYPES:
        data, media_type = await _convert_schema1(client, store.content, ref, data, events)
    manifest = parse_manifest(data, media_type)
    if not isinstance(manifest, Manifest):
        raise InvalidArgument(f"{ref} resolved to a nested index; nested indexes are not supported")
    leased = [manifest.config.digest, *(d.digest for d in manifest.layers)]
    async with store.lease(leased + ([index_digest] if index_digest else [])):
        # The config first: its diff_ids let each layer unpack while it downloads.
        await _fetch_all(client, store.content, ref, [manifest.config], events)
        config_bytes = await trio.to_thread.run_sync(store.content.read, manifest.config.digest)
        diff_ids = _diff_ids(config_bytes, manifest)
        # leased before they exist: a prune must not take a layer unpacked but not recorded
        async with store.lease(diff_ids or []), _unsynced_writes(store):
            await _fetch_layers(client, store, ref, manifest.layers, diff_ids, events)
            image = await store.add_image(
                data, media_type, config_bytes, [ref], index_digest=index_digest
            )
    for layer in manifest.layers:
        events.emit(layer.digest, "Pull complete")
    return image


@contextlib.asynccontextmanager
async def _unsynced_writes(store: ImageStore) -> AsyncIterator[None]:
    """Blobs and layers are written without an fsync each: ``store.writeback`` records that
    and makes them durable in the background once no pull is writing."""
    await trio.to_thread.run_sync(store.writeback.begin)
    try:
        yield
    finally:
        store.writeback.end()


def _diff_ids(config_bytes: bytes, manifest: Manifest) -> list[str] | None:
    """The config's diff_ids, one per layer; None when the config does not say (then the
    layers are unpacked after download and ``add_image`` reports what is wrong)."""
    try:
        diff_ids = list(parse_config(config_bytes).rootfs.diff_ids)
    except (EngineError, ValueError, TypeError):
        return None
    return diff_ids if len(diff_ids) == len(manifest.layers) else None


async def _fetch_layers(
    client: RegistryClient,
    store: ImageStore,
    ref: Reference,
    layers: list[Descriptor],
    diff_ids: list[str] | None,
    events: _Progress,
) -> None:
    """Download the layers concurrently; each one unpacks while it downloads when the
    storage driver and the client can stream (the overlay driver and the distribution
    client can), otherwise ``add_image`` unpacks it afterwards."""
    layer_stream = store.storage.layer_stream  # yields None when the driver cannot stream
    streaming = streaming_client(client)  # declares that fetch_blob takes a tee
    if diff_ids is None or streaming is None:
        await _fetch_all(client, store.content, ref, layers, events)
        return
    content = store.content

    async def fetch(desc: Descriptor, diff_id: str) -> None:
        if await trio.to_thread.run_sync(content.has, desc.digest):
            events.emit(desc.digest, "Already exists")
            return
        stream: LayerStream | None
        async with layer_stream(diff_id) as stream:
            # No fsync per blob or layer: see ``_unsynced_writes``.
            blob = await streaming.fetch_blob(
                ref,
                desc.digest,
                desc.size,
                content,
                progress=events.downloading(desc.digest),
                tee=stream,
                durable=False,
            )
            events.emit(desc.digest, "Verifying")
            events.emit(desc.digest, "Download complete")
            if stream is not None:
                events.emit(desc.digest, "Extracting")
                await stream.finish(blob)

    with unwrap_engine_errors():
        async with trio.open_nursery() as nursery:
            seen: set[str] = set()
            for desc, diff_id in zip(layers, diff_ids, strict=True):
                if desc.digest not in seen:
                    seen.add(desc.digest)
                    nursery.start_soon(fetch, desc, diff_id)


async def _fetch_all(
    client: RegistryClient,
    content: ContentStore,
    ref: Reference,
    blobs: list[Descriptor],
    events: _Progress,
) -> None:
    async def fetch(desc: Descriptor) -> None:
        if await trio.to_thread.run_sync(content.has, desc.digest):
            events.emit(desc.digest, "Already exists")
            return
        await client.fetch_blob(
            ref, desc.digest, desc.size, content, progress=events.downloading(desc.digest)
        )
        events.emit(desc.digest, "Verifying")
        events.emit(desc.digest, "Download complete")

    # The client's CapacityLimiter bounds concurrent downloads; starting them all lets
    # shared-layer dedup and the limiter do their job.
    with unwrap_engine_errors():
        async with trio.open_nursery() as nursery:
            for desc in _unique(blobs):
                nursery.start_soon(fetch, desc)


def _unique(blobs: list[Descriptor]) -> list[Descriptor]:
    seen: set[str] = set()
    out = []
    for desc in blobs:
        if desc.digest not in seen:
            seen.add(desc.digest)
            out.append(desc)
    return out


# --- schema1 ---------------------------------------------------------------------------------


async def _convert_schema1(
    client: RegistryClient,
    content: ContentStore,
    ref: Reference,
    data: bytes,
    events: _Progress,
) -> tuple[bytes, str]:
    """Download a schema1 image's layers and rebuild it as a schema2 manifest + config."""
    from engine.plugins.registry import schema1

    image = schema1.convert(data)
    # schema1 gives no layer sizes: fetch with the size unknown, read it afterwards
    unsized = [Descriptor(DOCKER_LAYER_GZIP, d, None) for d in image.layers]  # type: ignore[arg-type]
    await _fetch_all(client, content, ref, unsized, events)

    def measure() -> tuple[list[Descriptor], list[str]]:
        sized = [Descriptor(DOCKER_LAYER_GZIP, d, content.size(d)) for d in image.layers]
        return sized, [_diff_id(content.path(d)) for d in image.layers]

    sized, diff_ids = await trio.to_thread.run_sync(measure)
    config_bytes = image.config_with_diff_ids(diff_ids)
    manifest = {
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST,
        "config": {
            "mediaType": DOCKER_CONFIG,
            "digest": sha256_digest(config_bytes),
            "size": len(config_bytes),
        },
        "layers": [{"mediaType": d.media_type, "digest": d.digest, "size": d.size} for d in sized],
    }
    await trio.to_thread.run_sync(content.write, config_bytes)
    return json.dumps(manifest, separators=(",", ":")).encode(), DOCKER_MANIFEST


def _diff_id(blob: Path) -> str:
    """sha256 of the uncompressed tar (gzip, zstd or plain), streamed."""
    digest = hashlib.sha256()
    try:
        with open_decompressed(blob) as reader:
            while chunk := reader.read(1024 * 1024):
                digest.update(chunk)
    except decompress_errors() as exc:
        raise InvalidArgument(
            f"schema1 layer {blob.name} is not a valid compressed stream: {exc}"
        ) from exc
    return "sha256:" + digest.hexdigest()
