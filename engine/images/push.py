"""Push an image from the image store to a registry.

The layers and the config go first (concurrently, bounded), each one skipped when the
registry has it, mounted from another repository of the same registry when the image is
known there (its other names, or where the client saw the blob), uploaded otherwise. Then the
manifest is pushed exactly as stored, byte for byte, so the pushed image keeps its manifest
digest and pulls back identical.

Progress events: ``{"id": short digest, "status": "Preparing" | "Layer already exists" |
"Mounted from REPO" | "Pushed", ...}`` and a final ``{"status": "Pushed manifest", "digest":
...}``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import trio

from engine.errgroup import unwrap_engine_errors
from engine.errors import NotFound
from engine.images.types import Descriptor, Manifest, parse_manifest
from engine.reference import Reference, parse_reference

if TYPE_CHECKING:
    from engine.images.store import ImageStore
    from engine.plugin import RegistryClient

ProgressCallback = Callable[[dict[str, Any]], None]


async def push(
    client: RegistryClient,
    store: ImageStore,
    ref: Reference,
    *,
    source: str | None = None,
    progress: ProgressCallback | None = None,
    max_concurrent_uploads: int = 3,
) -> str:
    """Push the image named ``source`` (default: ``ref`` itself) to ``ref``; returns the
    manifest digest. Raises NotFound (no such image, or its blobs are gone from the content
    store), PermissionDenied, Unavailable."""
    image = store.get(source or str(ref))
    content = store.content
    manifest_bytes = await trio.to_thread.run_sync(content.read, image.manifest_digest)
    manifest = parse_manifest(manifest_bytes, image.manifest_media_type)
    assert isinstance(manifest, Manifest)  # the store records image manifests only
    blobs = [*manifest.layers, manifest.config]
    await _check_present(store, blobs)
    mount_from = _sibling_repos(image.repo_tags + image.repo_digests, ref)
    limiter = trio.CapacityLimiter(max_concurrent_uploads)

    def emit(event: dict[str, Any]) -> None:
        if progress is not None:
            progress(event)

    async def push_one(desc: Descriptor) -> None:
        async with limiter:
            emit({"id": _short(desc.digest), "status": "Preparing"})
            how = await client.push_blob(
                ref, desc.digest, desc.size, content, mount_from=mount_from or None
            )
            status = {"exists": "Layer already exists", "mounted": "Mounted"}.get(how, "Pushed")
            emit({"id": _short(desc.digest), "status": status, "total": desc.size})

    with unwrap_engine_errors():
        async with trio.open_nursery() as nursery:
            for desc in blobs:
                nursery.start_soon(push_one, desc)
    digest = await client.push_manifest(ref, manifest_bytes, image.manifest_media_type)
    emit({"status": "Pushed manifest", "digest": digest, "size": len(manifest_bytes)})
    return digest


async def _check_present(store: ImageStore, blobs: list[Descriptor]) -> None:
    def missing() -> list[str]:
        return [d.digest for d in blobs if not store.content.has(d.digest)]

    gone = await trio.to_thread.run_sync(missing)
    if gone:
        raise NotFound(
            f"cannot push: blob(s) {', '.join(gone)} of the image are missing from the content "
            "store (pull or load the image again)"
        )


def _sibling_repos(names: list[str], ref: Reference) -> list[str]:
    """Other repositories of the same registry that hold this image: mount sources."""
    repos: list[str] = []
    for name in names:
        try:
            other = parse_reference(name)
        except Exception:  # a stored name we cannot parse is simply not a mount source
            continue
        if other.domain == ref.domain and other.path != ref.path and other.path not in repos:
            repos.append(other.path)
    return repos


def _short(digest: str) -> str:
    return digest.removeprefix("sha256:")[:12]
