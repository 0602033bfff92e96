"""``commit``: a new image from a container's writable layer (docker commit).

The image is the container's image plus one layer: the storage driver writes the
container's changes as an OCI layer tar (``StorageDriver.diff_layer``), stored
uncompressed under its diff_id like ``import`` does. Its run defaults are the container's
own (its Cmd, Entrypoint, Env, WorkingDir, User, Labels, as docker's commit takes them),
then ``--change`` instructions. The manifest is an OCI one: the base image's layers keep
their blobs (docker media types mapped to OCI's), so the new image pushes and pulls like
any other. With ``pause`` (the default, as docker's) a running container is paused while
its layer is read.
"""

from __future__ import annotations

import datetime
import json
import shutil
import tarfile
from pathlib import Path
from typing import Any

import trio

from engine.actors import commands as c
from engine.actors.container import ContainerActor
from engine.actors.health import docker_healthcheck
from engine.actors.state import ContainerState
from engine.errors import Conflict, InvalidArgument
from engine.images import types as t
from engine.images.archive_files import file_sha256
from engine.images.changes import apply_changes
from engine.images.content import sha256_digest
from engine.images.records import Image, scratch_dir
from engine.images.store import ImageStore
from engine.reference import parse_reference
from engine.supervisor.app import App

COMMIT_CHANGES = ("CMD", "ENTRYPOINT", "ENV", "EXPOSE", "LABEL", "USER", "WORKDIR", "VOLUME", "STOPSIGNAL",
                  "HEALTHCHECK")
_OCI_LAYER_TYPES = {
    t.DOCKER_LAYER: t.OCI_LAYER,
    t.DOCKER_LAYER_GZIP: t.OCI_LAYER_GZIP,
    t.DOCKER_LAYER_FOREIGN: t.OCI_LAYER_NONDIST_GZIP,
}


# the files the runtime bind-mounts over (engine.supervisor.container_verbs.MOUNT_POINTS)
RUNTIME_MOUNT_TARGETS = frozenset({"/etc/hostname", "/etc/hosts", "/etc/resolv.conf"})


def drop_mount_targets(layer: Path, added: set[str]) -> None:
    """Rewrite the layer tar without the empty files made only as mount targets (the image
    lacked them: ``added``), as docker's commit leaves them out; a file with content there
    is the container's own and stays. Blocking."""
    if not added:
        return
    names = {p.lstrip("/") for p in added}
    with tarfile.open(layer) as tar:
        members = tar.getmembers()
        drop = {m.name.lstrip("./") for m in members
                if m.name.lstrip("./") in names and m.isreg() and m.size == 0}
    if not drop:
        return
    kept = layer.with_name(layer.name + ".kept")
    with tarfile.open(layer) as src, tarfile.open(kept, "w", format=tarfile.PAX_FORMAT) as out:
        for member in src:
            if member.name.lstrip("./") in drop:
                continue
            out.addfile(member, src.extractfile(member) if member.isreg() else None)
    kept.replace(layer)


def run_defaults(actor: ContainerActor, base: dict[str, Any]) -> dict[str, Any]:
    """The image's ``config`` object for the new image: the container's settings over the
    base image's (what ``docker commit`` records)."""
    config = dict(base)
    cc = actor.config
    if cc.entrypoint is not None:
        config["Entrypoint"] = list(cc.entrypoint) or None
    if cc.cmd is not None:
        config["Cmd"] = list(cc.cmd)
    elif cc.entrypoint is not None:
        config["Cmd"] = None  # docker: a new entrypoint drops the image's cmd
    config["Env"] = list(cc.env)
    if cc.workdir:
        config["WorkingDir"] = cc.workdir
    if cc.user:
        config["User"] = cc.user
    if cc.labels:
        config["Labels"] = dict(cc.labels)
    if cc.healthcheck is not None:
        config["Healthcheck"] = docker_healthcheck(cc.healthcheck)
    elif cc.healthcheck_disabled is not None:
        config["Healthcheck"] = dict(cc.healthcheck_disabled)  # docker records the NONE over the image's
    return {k: v for k, v in config.items() if v is not None}


def manifest_layers(store: ImageStore, image: Image) -> list[dict[str, Any]]:
    """The descriptors of ``image``'s layers for a new manifest on top of it (OCI media types)."""
    manifest = json.loads(store.content.read(image.manifest_digest))
    layers = []
    for layer in manifest.get("layers") or []:
        media = _OCI_LAYER_TYPES.get(layer.get("mediaType", ""), layer.get("mediaType", t.OCI_LAYER))
        layers.append({"mediaType": media, "digest": layer["digest"], "size": layer["size"]})
    return layers


async def commit(app: App, actor: ContainerActor, *, reference: str, message: str, author: str,
                 changes: list[str], pause: bool) -> Image:
    store = app.services.require_images()
    storage = app.storage()
    names = [parse_reference(reference)] if reference else []
    for change in changes:
        op = change.strip().partition(" ")[0].upper()
        if op not in COMMIT_CHANGES:
            raise InvalidArgument(f"--change {change!r}: {op or change!r} is not supported; use one of "
                                  + ", ".join(COMMIT_CHANGES))
    if actor.status.state in (ContainerState.REMOVING, ContainerState.DEAD):
        raise Conflict(f"container {actor.name} is being removed")
    base = store.get(actor.config.image_id)
    base_raw = json.loads(base.config.raw)
    image_config = apply_changes(run_defaults(actor, base_raw.get("config") or {}), changes)
    scratch = await trio.to_thread.run_sync(scratch_dir, store.layout.images_dir)
    held: list[str] = []
    committed = False
    try:
        layer = scratch / "layer.tar"
        paused = False
        if pause and actor.status.state == ContainerState.RUNNING:
            await actor.call(c.Pause())
            paused = True
        try:
            await storage.diff_layer(actor.id, layer)
            added = {path for kind, path in await storage.changes(actor.id) if kind == "A"}
        finally:
            if paused:
                with trio.CancelScope(shield=True):
                    await actor.call(c.Unpause())
        await trio.to_thread.run_sync(drop_mount_targets, layer, added & RUNTIME_MOUNT_TARGETS)
        diff_id, size = await trio.to_thread.run_sync(file_sha256, layer)
        store.hold([diff_id])
        held.append(diff_id)
        await trio.to_thread.run_sync(store.content.commit, layer, diff_id, size)
        created = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        history: dict[str, Any] = {"created": created, "created_by": " ".join(actor.config.args)}
        if author:
            history["author"] = author
        if message:
            history["comment"] = message
        config = {
            **base_raw,
            "created": created,
            "config": image_config,
            "rootfs": {"type": "layers", "diff_ids": [*base.diff_ids, diff_id]},
            "history": [*(base_raw.get("history") or []), history],
        }
        if author:
            config["author"] = author
        config_bytes = json.dumps(config, separators=(",", ":"), sort_keys=True).encode()
        manifest = {
            "schemaVersion": 2,
            "mediaType": t.OCI_MANIFEST,
            "config": {"mediaType": t.OCI_CONFIG, "digest": sha256_digest(config_bytes),
                       "size": len(config_bytes)},
            "layers": [*manifest_layers(store, base),
                       {"mediaType": t.OCI_LAYER, "digest": diff_id, "size": size}],
        }
        manifest_bytes = json.dumps(manifest, separators=(",", ":")).encode()
        image = await store.add_image(manifest_bytes, t.OCI_MANIFEST, config_bytes, names, repo_digests=False)
        committed = True
        return image
    finally:
        await trio.to_thread.run_sync(shutil.rmtree, scratch, True)
        store.release(held)
        if not committed:
            with trio.CancelScope(shield=True):
                await store.discard_unreferenced(held)
