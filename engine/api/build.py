"""image.build: build an image from a Dockerfile in a directory the daemon can read.

The directory is packed (without what its ``.dockerignore`` excludes; symlinks stay links)
and unpacked into a private scratch directory through the same checks as the Docker API's
``POST /build`` context, so both front doors build from the same kind of context. The
stream carries dockerd's build lines (``{"stream": …}``, ``{"aux": {"ID": …}}``)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import attrs
import trio

from engine.errors import InvalidArgument
from engine.images.records import scratch_dir
from engine.rpc.methods import MethodTable
from engine.rpc.server import CallContext, StreamSender


@attrs.frozen
class BuildParams:
    context: str  # an absolute directory path
    dockerfile: str = "Dockerfile"  # relative to the context, or an absolute path
    tags: list[str] = attrs.field(factory=list)
    build_args: dict[str, str] = attrs.field(factory=dict)
    labels: dict[str, str] = attrs.field(factory=dict)
    no_cache: bool = False
    pull: bool = False
    quiet: bool = False
    target: str = ""
    network: str = ""
    platform: str = ""


def prepare_context(source: Path, dockerfile: str, scratch: Path) -> tuple[Path, str]:
    """Blocking: ``source`` packed and unpacked safely into ``scratch/context``; returns
    it and the Dockerfile's name there (one outside the context is copied in)."""
    from engine.build.context import context_ignores, extract_context, pack_directory

    if not source.is_absolute() or not source.is_dir():
        raise InvalidArgument(f"build context {source} is not a directory (an absolute path is needed)")
    inside = dockerfile
    outside: Path | None = None
    if Path(dockerfile).is_absolute():
        path = Path(dockerfile)
        try:
            inside = str(path.relative_to(source))
        except ValueError:
            outside, inside = path, ".engine-dockerfile"
    archive = scratch / "context.tar"
    with open(archive, "wb") as out:
        pack_directory(source, out, context_ignores(source), inside)
    context = scratch / "context"
    context.mkdir()
    with open(archive, "rb") as f:
        extract_context(f, context, dockerfile=inside)
    archive.unlink()
    if outside is not None:
        try:
            shutil.copyfile(outside, context / inside)
        except OSError as e:
            raise InvalidArgument(f"cannot read the Dockerfile {outside}: {e.strerror}") from None
    return context, inside


def register(table: MethodTable) -> None:
    @table.method("image.build", params=BuildParams, stream=True)
    async def build(ctx: CallContext, p: BuildParams, stream: StreamSender) -> dict[str, Any]:
        """Build an image from a Dockerfile (docker build); dockerd's lines stream as items."""
        # imported at the first build: a daemon that never builds does not hold the builder
        from engine.build.builder import Builder, BuildOptions

        store = ctx.app.services.require_images()
        scratch = await trio.to_thread.run_sync(scratch_dir, store.layout.images_dir)
        try:
            context, dockerfile = await trio.to_thread.run_sync(prepare_context, Path(p.context), p.dockerfile,
                                                                scratch)
            options = BuildOptions(tags=list(p.tags), dockerfile=dockerfile,
                                   build_args={k: v for k, v in p.build_args.items()}, labels=dict(p.labels),
                                   no_cache=p.no_cache, pull=p.pull, quiet=p.quiet, target=p.target,
                                   network_mode=p.network, platform=p.platform)
            image = await Builder(ctx.app, context, options, stream.send).build()
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(shutil.rmtree, scratch, True)
        return {"Id": image.id, "Tags": image.familiar_tags()}
