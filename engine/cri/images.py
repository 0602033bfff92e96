"""The CRI ImageService over the engine's image store (the one engctl uses).

Images are named as the CRI client asked for them (``registry.k8s.io/pause:3.9``): a
registry mirror (``--registry-mirror registry.k8s.io=http://127.0.0.1:5600``) changes
where bytes come from, never the name. Credentials given with a PullImage serve that one
pull only: a registry client is built for it that knows only them.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator

import trio

from engine.cri.gen import api_pb2 as pb
from engine.errors import InvalidArgument, NotFound
from engine.images.records import Image
from engine.images.store import ImageStore
from engine.plugin import RegistryClient, RegistryCredentials
from engine.reference import Reference, parse_reference
from engine.supervisor.app import App

log = logging.getLogger("engine.cri")


def image_user(image: Image) -> tuple[int | None, str]:
    """The image's USER as the CRI reports it: a numeric uid, or a user name."""
    user = (image.config.config.user or "").split(":", 1)[0]
    if not user:
        return None, ""
    if user.isdigit():
        return int(user), ""
    return None, user


def to_cri_image(image: Image) -> pb.Image:
    uid, username = image_user(image)
    out = pb.Image(
        id=image.id,
        repo_tags=list(image.repo_tags),
        repo_digests=list(image.repo_digests),
        size=image.size,
        username=username,
        spec=pb.ImageSpec(image=image.id),
    )
    if uid is not None:
        out.uid.value = uid
    return out


def request_credentials(auth: pb.AuthConfig) -> RegistryCredentials | None:
    """The CRI's AuthConfig: username/password, or ``auth`` as base64 ``user:password``.
    Identity and registry tokens are not supported yet (a clear error rather than an
    anonymous pull)."""
    if auth.identity_token or auth.registry_token:
        raise InvalidArgument("PullImage: identity_token and registry_token are not supported "
                              "yet; give username and password")
    username, password = auth.username, auth.password
    if not username and auth.auth:
        try:
            username, _, password = base64.b64decode(auth.auth).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            raise InvalidArgument("PullImage: auth is not base64 'user:password'") from None
    if not username:
        return None
    return RegistryCredentials(username=username, password=password)


class ImageHandlers:
    """One method per ImageService RPC (snake_case), each taking the request message."""

    def __init__(self, app: App) -> None:
        self.app = app

    def store(self) -> ImageStore:
        return self.app.services.require_images()

    def find(self, ref: str) -> Image | None:
        if not ref:
            raise InvalidArgument("an image reference is required")
        try:
            return self.store().get(ref)
        except NotFound:
            return None
        except InvalidArgument:
            return None  # not a reference we could parse: no such image

    async def list_images(self, request: pb.ListImagesRequest) -> pb.ListImagesResponse:
        wanted = request.filter.image.image if request.HasField("filter") else ""
        if wanted:
            image = self.find(wanted)
            images = [image] if image is not None else []
        else:
            images = self.store().list()
        return pb.ListImagesResponse(images=[to_cri_image(i) for i in images])

    async def image_status(self, request: pb.ImageStatusRequest) -> pb.ImageStatusResponse:
        image = self.find(request.image.image)
        if image is None:
            return pb.ImageStatusResponse()  # the CRI's "not present": no image, no error
        return pb.ImageStatusResponse(image=to_cri_image(image))

    async def pull_image(self, request: pb.PullImageRequest) -> pb.PullImageResponse:
        from engine.images.pull import pull

        text = request.image.image
        if not text:
            raise InvalidArgument("PullImage: an image reference is required")
        ref = parse_reference(text)
        creds = request_credentials(request.auth) if request.HasField("auth") else None
        async with registry_client(self.app, ref, creds) as client:
            image = await pull(client, self.store(), ref)
        self.app.events.emit("image", "pull", image.id, name=str(ref))
        return pb.PullImageResponse(image_ref=image.id)

    async def remove_image(self, request: pb.RemoveImageRequest) -> pb.RemoveImageResponse:
        """Idempotent: a missing image is removed already. By name, the name goes (and the
        image with its last name); by ID, every name and the image."""
        from engine.api.images import in_use_by_containers

        image = self.find(request.image.image)
        if image is None:
            return pb.RemoveImageResponse()
        in_use = in_use_by_containers(self.app)
        try:
            await self.store().remove(image.id, force=True, in_use=in_use)
        except NotFound:
            pass
        self.app.events.emit("image", "delete", image.id)
        return pb.RemoveImageResponse()

    async def image_fs_info(self, request: pb.ImageFsInfoRequest) -> pb.ImageFsInfoResponse:
        layout = self.app.layout
        usage = self.store().usage()
        inodes = await trio.to_thread.run_sync(_inodes_used, str(layout.root))
        fs = pb.FilesystemUsage(timestamp=time.time_ns(),
                                fs_id=pb.FilesystemIdentifier(mountpoint=str(layout.root)))
        fs.used_bytes.value = int(usage["Size"])
        fs.inodes_used.value = inodes
        return pb.ImageFsInfoResponse(image_filesystems=[fs])


def _inodes_used(path: str) -> int:
    st = os.statvfs(path)
    return int(st.f_files - st.f_ffree)


@contextlib.asynccontextmanager
async def registry_client(app: App, ref: Reference, creds: RegistryCredentials | None,
                          ) -> AsyncIterator[RegistryClient]:
    """The registry client for ``ref``; with request credentials and the built-in client,
    a fresh one that knows only them (closed afterwards)."""
    from engine.plugins.registry.client import DistributionClient
    from engine.plugins.registry.plugin import build_client

    client = app.plugins.register.registry_client_for(ref.domain)
    if creds is None or not isinstance(client, DistributionClient):
        yield client
        return

    async def only_these(_host: str) -> RegistryCredentials | None:
        return creds

    own = build_client(app.config.to_plugin_dict(), only_these)
    try:
        yield own
    finally:
        with trio.CancelScope(shield=True):
            await own.aclose()
