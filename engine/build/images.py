"""The images a build makes: one per step, each its parent's layers plus at most one.

A metadata step (ENV, CMD, …) makes an image with the parent's layers and a new config
(history ``empty_layer``); a RUN, COPY, ADD or WORKDIR step commits the changes of its
container as an uncompressed OCI layer, as ``engine.supervisor.commit`` does for
``docker commit``. Nothing half-made stays: a layer whose image was not recorded is
discarded.
"""

from __future__ import annotations

import datetime
import json
import platform
import shutil
from pathlib import Path
from typing import Any

import trio

from engine.images import types as t
from engine.images.archive_files import file_sha256
from engine.images.content import sha256_digest
from engine.images.records import Image, scratch_dir
from engine.images.store import ImageStore
from engine.supervisor.commit import manifest_layers as commit_layers

_GO_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "ppc64le": "ppc64le", "s390x": "s390x"}


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def scratch_config() -> dict[str, Any]:
    """The raw config of ``FROM scratch``: no layers, this host's platform."""
    machine = platform.machine()
    return {"architecture": _GO_ARCH.get(machine, machine), "os": "linux", "config": {},
            "rootfs": {"type": "layers", "diff_ids": []}, "history": []}


def manifest_layers(store: ImageStore, image: Image | None) -> list[dict[str, Any]]:
    """The base's layer descriptors (as a commit takes them); none for scratch."""
    return [] if image is None else commit_layers(store, image)


async def new_image(store: ImageStore, base: Image | None, base_raw: dict[str, Any], config: dict[str, Any],
                    created_by: str, layer: Path | None = None) -> Image:
    """Record the step's image: ``base``'s layers (none for scratch), ``layer`` (an
    uncompressed tar, moved into the content store) on top when given, ``config`` as the
    run defaults. Untagged."""
    created = now_rfc3339()
    history: dict[str, Any] = {"created": created, "created_by": created_by}
    diff_ids = list(base.diff_ids) if base is not None else []
    layers = manifest_layers(store, base)
    held: list[str] = []
    recorded = False
    try:
        if layer is not None:
            diff_id, size = await trio.to_thread.run_sync(file_sha256, layer)
            store.hold([diff_id])
            held.append(diff_id)
            await trio.to_thread.run_sync(store.content.commit, layer, diff_id, size)
            diff_ids.append(diff_id)
            layers.append({"mediaType": t.OCI_LAYER, "digest": diff_id, "size": size})
        else:
            history["empty_layer"] = True
        raw = {
            **base_raw,
            "created": created,
            "config": {k: v for k, v in config.items() if v is not None},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": [*(base_raw.get("history") or []), *([history] if created_by else [])],
        }
        config_bytes = json.dumps(raw, separators=(",", ":"), sort_keys=True).encode()
        manifest = {
            "schemaVersion": 2,
            "mediaType": t.OCI_MANIFEST,
            "config": {"mediaType": t.OCI_CONFIG, "digest": sha256_digest(config_bytes), "size": len(config_bytes)},
            "layers": layers,
        }
        manifest_bytes = json.dumps(manifest, separators=(",", ":")).encode()
        image = await store.add_image(manifest_bytes, t.OCI_MANIFEST, config_bytes, [], repo_digests=False)
        recorded = True
        return image
    finally:
        store.release(held)
        if not recorded and held:
            with trio.CancelScope(shield=True):
                await store.discard_unreferenced(held)


async def layer_scratch(store: ImageStore) -> Path:
    return await trio.to_thread.run_sync(scratch_dir, store.layout.images_dir)


async def remove_scratch(path: Path) -> None:
    with trio.CancelScope(shield=True):
        await trio.to_thread.run_sync(shutil.rmtree, path, True)
