"""image.* and registry.* methods: list, inspect, history, tag, remove, prune, load, save,
import, pull, push, login, logout."""

from __future__ import annotations

import contextlib
import fnmatch
import logging
import math
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import attrs
import trio

from engine.errgroup import unwrap_engine_errors
from engine.errors import EngineError, InvalidArgument
from engine.images import archive, auth_config
from engine.images.records import Image
from engine.images.store import ImageStore
from engine.plugin import RegistryClient
from engine.plugins.registry import credhelpers
from engine.reference import parse_reference
from engine.rpc.methods import MethodTable
from engine.rpc.server import CallContext, StreamSender
from engine.supervisor.app import App
from engine.supervisor.containers import settle_removals

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
    filters: dict[str, list[str]] = attrs.field(factory=dict)  # until, label, label!


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
    return ctx.app.services.require_images()


def registry_client(app: App, host: str) -> RegistryClient:
    """The registry client plugin that handles ``host`` (Unavailable when none does)."""
    return app.plugins.register.registry_client_for(host)


def summary(image: Image) -> dict[str, Any]:
    """docker's image summary: names in their familiar form (busybox:latest)."""
    return {
        "Id": image.id,
        "RepoTags": image.familiar_tags(),
        "RepoDigests": image.familiar_digests(),
        "Created": image.created,
        "Size": image.size,
        "Architecture": image.architecture,
        "Os": image.os,
        "Layers": len(image.diff_ids),
    }


def in_use_by_containers(app: App) -> Callable[[str], bool]:
    """rmi/prune ask this: does any container (running or not) use the image?"""

    return app.services.require_containers().image_in_use


def _absolute(path: str) -> Path:
    p = Path(path)
    if not p.is_absolute():
        raise InvalidArgument(f"path {path!r} must be absolute (it is read by the daemon)")
    return p


_FILTERS = ("dangling", "reference", "label", "before", "since")


def list_filter(store: ImageStore, filters: dict[str, list[str]]) -> Callable[[Image], bool]:
    """docker images --filter: every key must match; values of one key are alternatives
    (labels: all must match, as in docker)."""
    unknown = set(filters) - set(_FILTERS)
    if unknown:
        raise InvalidArgument(
            f"unknown image filter {', '.join(sorted(unknown))}; use one of {', '.join(_FILTERS)}"
        )
    checks = [_filter_check(store, key, values) for key, values in filters.items()]
    return lambda image: all(check(image) for check in checks)


def _filter_check(store: ImageStore, key: str, values: list[str]) -> Callable[[Image], bool]:
    if key == "dangling":
        want = _bool_filter(values[-1])
        return lambda image: image.dangling == want
    if key == "reference":
        return lambda image: _reference_matches(image, values)
    if key == "label":
        return lambda image: all(_label_matches(image, v) for v in values)
    pivot = store.get(values[-1])  # before/since name an image; NotFound says which
    if key == "before":
        return lambda image: (image.created, image.id) < (pivot.created, pivot.id)
    return lambda image: (image.created, image.id) > (pivot.created, pivot.id)


def _bool_filter(value: str) -> bool:
    lowered = value.lower()
    if lowered not in ("true", "false", "1", "0"):
        raise InvalidArgument(f"invalid filter value dangling={value!r}: use true or false")
    return lowered in ("true", "1")


def _reference_matches(image: Image, patterns: list[str]) -> bool:
    """docker matches ``repo`` or ``repo:tag`` patterns (shell globs) on familiar names;
    full names match too, so ``docker.io/library/*`` works."""
    names = [*image.familiar_tags(), *image.repo_tags]
    for name in names:
        repo = name.rsplit(":", 1)[0] if ":" in name.rsplit("/", 1)[-1] else name
        for pattern in patterns:
            if fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(repo, pattern):
                return True
    return False


def _label_matches(image: Image, wanted: str) -> bool:
    labels = image.config.config.labels or {}
    key, sep, value = wanted.partition("=")
    return key in labels and (not sep or labels[key] == value)


async def load_images(app: App, path: Path) -> list[Image]:
    """docker load (the RPC's image.load and the Docker API's POST /images/load)."""
    loaded = await archive.load(app.services.require_images(), path)
    for image in loaded:
        app.events.emit("image", "load", image.id)
    return loaded


async def import_image(app: App, path: Path, reference: str, *, changes: list[str], message: str) -> Image:
    """docker import (the RPC's image.import and the Docker API's fromSrc)."""
    image = await archive.import_rootfs(app.services.require_images(), path, reference or None,
                                        changes=changes, message=message)
    app.events.emit("image", "import", image.id)
    return image


def register(table: MethodTable) -> None:
    @table.method("image.list", params=ListParams)
    async def list_(ctx: CallContext, p: ListParams) -> list[dict[str, Any]]:
        """Images in the store (docker images)."""
        store = images(ctx)
        match = list_filter(store, p.filters)
        return [summary(i) for i in store.list() if match(i)]

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
        await settle_removals(ctx.app)
        result = await images(ctx).remove(p.id, force=p.force, in_use=in_use_by_containers(ctx.app))
        ctx.app.events.emit("image", "delete", p.id)
        return result

    @table.method("image.prune", params=PruneParams)
    async def prune(ctx: CallContext, p: PruneParams) -> Any:
        """Remove dangling images (all unused ones with all); filters until (created
        before), label, label!."""
        from engine.supervisor.system import image_filter, prune_images

        filters = dict(p.filters)
        all_images = p.all or filters.pop("dangling", ["true"])[-1].lower() in ("false", "0")
        return await prune_images(ctx.app, all_images=all_images, match=image_filter(filters))

    @table.method("image.load", params=PathParams)
    async def load(ctx: CallContext, p: PathParams) -> dict[str, Any]:
        """Load a docker-archive tar or an OCI layout (directory or tar) from a path."""
        loaded = await load_images(ctx.app, _absolute(p.path))
        return {"Images": [summary(i) for i in loaded]}

    @table.method("image.save", params=SaveParams)
    async def save(ctx: CallContext, p: SaveParams) -> dict[str, Any]:
        """Write images to a path as docker-archive, oci or oci-archive."""
        await archive.save(images(ctx), p.images, _absolute(p.path), p.format)
        return {"path": p.path}

    @table.method("image.import", params=ImportParams)
    async def import_(ctx: CallContext, p: ImportParams) -> dict[str, Any]:
        """docker import: a root filesystem tarball becomes a one-layer image."""
        image = await import_image(ctx.app, _absolute(p.path), p.reference, changes=p.changes,
                                   message=p.message)
        return summary(image)

    @table.method("image.pull", params=PullParams, stream=True)
    async def pull(ctx: CallContext, p: PullParams, stream: StreamSender) -> dict[str, Any]:
        """Pull from a registry; progress events stream as items."""
        from engine.images.pull import pull as do_pull

        ref = parse_reference(p.reference)
        store = images(ctx)
        before = _current_image_id(store, str(ref))
        async with _progress_forwarder(stream) as progress:
            image = await do_pull(registry_client(ctx.app, ref.domain), store, ref,
                                  platform=p.platform or None, progress=progress)
        ctx.app.events.emit("image", "pull", image.id, name=str(ref))
        digest = image.index_digest or image.manifest_digest
        status = "up to date" if before == image.id else "downloaded"
        return {"Id": image.id, "Reference": ref.familiar(), "Digest": digest, "Status": status}

    @table.method("image.push", params=PushParams, stream=True)
    async def push(ctx: CallContext, p: PushParams, stream: StreamSender) -> dict[str, Any]:
        """Push an image to a registry; progress events stream as items."""
        from engine.images.push import push as do_push

        ref = parse_reference(p.reference)
        if ref.digest is not None:
            raise InvalidArgument(
                f"cannot push to a digest reference {p.reference!r}: push to a tag "
                "(engctl tag IMAGE REPO:TAG first)"
            )
        async with _progress_forwarder(stream) as progress:
            digest = await do_push(registry_client(ctx.app, ref.domain), images(ctx), ref,
                                   source=p.source or None, progress=progress)
        ctx.app.events.emit("image", "push", digest, name=str(ref))
        return {"Digest": digest, "Reference": ref.familiar()}

    @table.method("registry.login", params=LoginParams)
    async def login(ctx: CallContext, p: LoginParams) -> dict[str, Any]:
        """Check credentials against the registry and store them (docker-style auths)."""
        server = registry_host(p.server)
        client = registry_client(ctx.app, server)
        await client.check_login(server, p.username, p.password)
        path = auth_config.auth_path(ctx.app.config.to_plugin_dict())
        await credhelpers.store_login(path, server, p.username, p.password)
        client.forget_credentials(server)
        return {"Status": "Login Succeeded", "Server": server}

    @table.method("registry.logout", params=LogoutParams)
    async def logout(ctx: CallContext, p: LogoutParams) -> dict[str, Any]:
        """Forget the stored credentials for a registry."""
        path = auth_config.auth_path(ctx.app.config.to_plugin_dict())
        server = registry_host(p.server)
        removed = await credhelpers.erase_login(path, server)
        registry_client(ctx.app, server).forget_credentials(server)
        return {"Removed": removed, "Server": server}


def registry_host(server: str) -> str:
    """``https://host:port/v2/`` or ``host:port`` -> ``host:port`` (what docker accepts)."""
    host = server.strip()
    for prefix in ("https://", "http://"):
        host = host.removeprefix(prefix)
    host = host.split("/", 1)[0]
    if not host:
        raise InvalidArgument(f"invalid registry address {server!r}: expected HOST[:PORT]")
    return host


def _current_image_id(store: ImageStore, name: str) -> str | None:
    try:
        return store.get(name).id
    except EngineError:
        return None


@contextlib.asynccontextmanager
async def _progress_forwarder(
    stream: StreamSender,
) -> AsyncIterator[Callable[[dict[str, Any]], None]]:
    """A non-blocking progress callback whose events reach the client as stream items.

    Byte counts ("Downloading") are dropped when the client falls behind; state changes are
    never dropped (the buffer only fills with byte counts, which the client can lose)."""
    send, receive = trio.open_memory_channel[dict[str, Any]](math.inf)
    pending = [0]

    def progress(event: dict[str, Any]) -> None:
        if "current" in event and pending[0] >= _MAX_PENDING_BYTE_COUNTS:
            return
        pending[0] += 1
        send.send_nowait(event)

    async def forward() -> None:
        async for event in receive:
            pending[0] -= 1
            await stream.send(event)

    # the pull's own error, not a nursery's group, is what the caller must see
    with unwrap_engine_errors():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(forward)
            try:
                yield progress
            finally:
                send.close()


_MAX_PENDING_BYTE_COUNTS = 64
