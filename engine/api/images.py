"""image.* and registry.* methods: list, inspect, history, tag, remove, prune, load, save,
import, pull, push, login, logout."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import attrs
import trio

from engine.errors import EngineError, InvalidArgument, Unavailable
from engine.images import archive, auth_config
from engine.images.content import ContentStore
from engine.images.store import ImageStore
from engine.reference import parse_reference
from engine.rpc.methods import MethodTable
from engine.rpc.server import CallContext, StreamSender
from engine.supervisor.app import App

log = logging.getLogger("engine.images")


@attrs.frozen
class ImageRef:
    id: str


@attrs.frozen
class ListParams:
    all: bool = False
    filters: dict[str, list[str]] = attrs.field(factory=dict)


@attrs.frozen
class TagParams:
    source: str
    target: str


@attrs.frozen
class RemoveParams:
    id: str
    force: bool = False


@attrs.frozen
class PruneParams:
    all: bool = False


@attrs.frozen
class PathParams:
    path: str


@attrs.frozen
class SaveParams:
    images: list[str]
    path: str
    format: str = "docker-archive"


@attrs.frozen
class ImportParams:
    path: str
    reference: str = ""
    changes: list[str] = attrs.field(factory=list)
    message: str = ""


@attrs.frozen
class PullParams:
    reference: str
    platform: str = ""


@attrs.frozen
class PushParams:
    reference: str
    source: str = ""


@attrs.frozen
class LoginParams:
    server: str
    username: str
    password: str


@attrs.frozen
class LogoutParams:
    server: str


def images(ctx: CallContext) -> ImageStore:
    store = ctx.app.services.get("images")
    if store is None:
        reason = ctx.app.services.get("images_error", "no storage driver")
        raise Unavailable(f"the image store is unavailable: {reason}")
    return store  # type: ignore[no-any-return]


def registry_client(app: App) -> Any:
    clients = app.plugins.register.registry_clients
    if not clients:
        raise Unavailable("no registry client plugin is loaded; `engctl info` shows why")
    return clients[0]


def summary(image: Any) -> dict[str, Any]:
    return {
        "Id": image.id,
        "RepoTags": image.familiar_tags if hasattr(image, "familiar_tags") else image.repo_tags,
        "RepoDigests": image.repo_digests,
        "Created": image.created,
        "Size": image.size,
        "Architecture": image.architecture,
        "Os": image.os,
        "Layers": len(image.diff_ids),
    }


def in_use_by_containers(app: App) -> Any:
    def in_use(image_id: str) -> bool:
        sup = app.services.get("containers")
        return bool(sup) and any(a.config.image_id == image_id for a in sup.actors.values())

    return in_use


def _absolute(path: str) -> Path:
    p = Path(path)
    if not p.is_absolute():
        raise InvalidArgument(f"path {path!r} must be absolute (it is read by the daemon)")
    return p


def list_filter(filters: dict[str, list[str]]) -> Any:
    allowed = {"dangling", "reference", "label", "before", "since"}
    unknown = set(filters) - allowed
    if unknown:
        raise InvalidArgument(f"unknown image filter {', '.join(sorted(unknown))}; use {', '.join(sorted(allowed))}")

    def match(image: Any) -> bool:
        for key, values in filters.items():
            if key == "dangling":
                want = values[-1].lower() in ("true", "1")
                if image.dangling != want:
                    return False
            if key == "reference":
                import fnmatch

                names = list(getattr(image, "familiar_tags", image.repo_tags)) + list(image.repo_tags)
                if not any(fnmatch.fnmatch(n, v) or fnmatch.fnmatch(n.rsplit(":", 1)[0], v) for n in names for v in values):
                    return False
            if key == "label":
                labels = image.config.config.labels or {}
                for v in values:
                    k, sep, want_v = v.partition("=")
                    if k not in labels or (sep and labels[k] != want_v):
                        return False
        return True

    return match


def register(table: MethodTable) -> None:
    @table.method("image.list", params=ListParams)
    async def list_(ctx: CallContext, p: ListParams) -> list[dict[str, Any]]:
        """Images in the store (docker images)."""
        match = list_filter(p.filters)
        return [summary(i) for i in images(ctx).list() if match(i)]

    @table.method("image.inspect", params=ImageRef)
    async def inspect(ctx: CallContext, p: ImageRef) -> dict[str, Any]:
        """docker image inspect."""
        return images(ctx).inspect(p.id)

    @table.method("image.history", params=ImageRef)
    async def history(ctx: CallContext, p: ImageRef) -> list[dict[str, Any]]:
        """The image's layers and the steps that made them."""
        return images(ctx).history(p.id)

    @table.method("image.tag", params=TagParams)
    async def tag(ctx: CallContext, p: TagParams) -> dict[str, Any]:
        """Give an image another name."""
        image = await images(ctx).tag(p.source, p.target)
        ctx.app.events.emit("image", "tag", image.id, name=p.target)
        return {"Id": image.id}

    @table.method("image.remove", params=RemoveParams)
    async def remove(ctx: CallContext, p: RemoveParams) -> Any:
        """docker rmi: untag, and delete the image once no names are left."""
        result = await images(ctx).remove(p.id, force=p.force, in_use=in_use_by_containers(ctx.app))
        ctx.app.events.emit("image", "delete", p.id)
        return result

    @table.method("image.prune", params=PruneParams)
    async def prune(ctx: CallContext, p: PruneParams) -> Any:
        """Remove dangling images (all unused ones with all)."""
        return await images(ctx).prune(dangling_only=not p.all, in_use=in_use_by_containers(ctx.app))

    @table.method("image.load", params=PathParams)
    async def load(ctx: CallContext, p: PathParams) -> dict[str, Any]:
        """Load a docker-archive tar or an OCI layout (directory or tar) from a path."""
        loaded = await archive.load(images(ctx), _absolute(p.path))
        for image in loaded:
            ctx.app.events.emit("image", "load", image.id)
        return {"Images": [summary(i) for i in loaded]}

    @table.method("image.save", params=SaveParams)
    async def save(ctx: CallContext, p: SaveParams) -> dict[str, Any]:
        """Write images to a path as docker-archive, oci or oci-archive."""
        await archive.save(images(ctx), p.images, _absolute(p.path), p.format)
        return {"path": p.path}

    @table.method("image.import", params=ImportParams)
    async def import_(ctx: CallContext, p: ImportParams) -> dict[str, Any]:
        """docker import: a root filesystem tarball becomes a one-layer image."""
        image = await archive.import_rootfs(images(ctx), _absolute(p.path), p.reference or None,
                                           changes=p.changes, message=p.message)
        ctx.app.events.emit("image", "import", image.id)
        return summary(image)

    @table.method("image.pull", params=PullParams, stream=True)
    async def pull(ctx: CallContext, p: PullParams, stream: StreamSender) -> dict[str, Any]:
        """Pull from a registry; progress events stream as items."""
        from engine.images.pull import pull as do_pull

        ref = parse_reference(p.reference)
        send, receive = trio.open_memory_channel[dict[str, Any]](256)

        def progress(event: dict[str, Any]) -> None:
            try:
                send.send_nowait(event)
            except trio.WouldBlock:
                pass  # progress is advisory: drop it rather than slow the pull

        async def forward() -> None:
            async for event in receive:
                await stream.send(event)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(forward)
            try:
                image = await do_pull(registry_client(ctx.app), images(ctx), ref,
                                      platform=p.platform or None, progress=progress)
            finally:
                send.close()
        ctx.app.events.emit("image", "pull", image.id, name=str(ref))
        return {"Id": image.id, "Reference": str(ref), "Digest": image.manifest_digest}

    @table.method("image.push", params=PushParams, stream=True)
    async def push(ctx: CallContext, p: PushParams, stream: StreamSender) -> dict[str, Any]:
        """Push an image to a registry; progress events stream as items."""
        from engine.images.push import push as do_push

        ref = parse_reference(p.reference)
        send, receive = trio.open_memory_channel[dict[str, Any]](256)

        def progress(event: dict[str, Any]) -> None:
            try:
                send.send_nowait(event)
            except trio.WouldBlock:
                pass

        async def forward() -> None:
            async for event in receive:
                await stream.send(event)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(forward)
            try:
                digest = await do_push(registry_client(ctx.app), images(ctx), ref,
                                       source=p.source or None, progress=progress)
            finally:
                send.close()
        ctx.app.events.emit("image", "push", digest, name=str(ref))
        return {"Digest": digest, "Reference": str(ref)}

    @table.method("registry.login", params=LoginParams)
    async def login(ctx: CallContext, p: LoginParams) -> dict[str, Any]:
        """Check credentials against the registry and store them (docker-style auths)."""
        client = registry_client(ctx.app)
        check = getattr(client, "check_login", None)
        if check is not None:
            await check(p.server, p.username, p.password)
        path = auth_config.default_auth_path(ctx.app.config.to_plugin_dict())
        await trio.to_thread.run_sync(auth_config.store_auth, path, p.server, p.username, p.password)
        return {"Status": "Login Succeeded"}

    @table.method("registry.logout", params=LogoutParams)
    async def logout(ctx: CallContext, p: LogoutParams) -> dict[str, Any]:
        """Forget the stored credentials for a registry."""
        path = auth_config.default_auth_path(ctx.app.config.to_plugin_dict())
        removed = await trio.to_thread.run_sync(auth_config.remove_auth, path, p.server)
        return {"Removed": removed}


async def start_images(app: App, nursery: trio.Nursery) -> None:
    try:
        storage = app.storage()
    except EngineError as e:
        log.error("images are unavailable: %s", e)
        app.services["images_error"] = str(e)
        return
    layout = app.layout

    def open_store() -> ImageStore:
        content = ContentStore(layout.blobs_dir, layout.ingest_dir)
        return ImageStore(layout, content, storage)

    store = await trio.to_thread.run_sync(open_store)
    await store.reconcile()
    app.services["images"] = store
