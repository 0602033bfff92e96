"""The image store: images by ID, names and tags, with docker's rmi/tag semantics.

An image is recorded only after its manifest, config and layer blobs are in the content
store and every layer is unpacked by the storage driver, so a crash in between leaves only
unreferenced blobs and layers, which ``prune`` frees. Mutations are serialised by one lock
and each one is a single atomic rewrite of the state file (see ``records``).

Blobs and layers that a running operation (a pull, a load) has put in place but not yet
recorded are protected from ``prune``/``remove`` by a lease: ``async with store.lease(...)``.
"""

from __future__ import annotations

import builtins
import contextlib
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from typing import Any

import attrs
import trio

from engine.errors import Conflict, InvalidArgument, NotFound
from engine.images import records as rec
from engine.images.content import ContentStore, file_digest, sha256_digest
from engine.images.records import Image
from engine.images.types import Manifest, parse_config, parse_manifest
from engine.images.views import history_view, inspect_view
from engine.plugin import StorageDriver
from engine.reference import (
    Reference,
    is_full_image_id,
    is_image_id_prefix,
    normalize_image_id,
    parse_reference,
)
from engine.store.atomic import fsync_dir, read_json, syncfs, write_json_atomic
from engine.store.layout import Layout


def _never_in_use(_image_id: str) -> bool:
    return False


def _never_reserved(_image: Image) -> bool:
    return False


# Parts of the daemon that keep images for their own use (the build cache's step images)
# attach here: each is called with a new store (in the thread that loads it, so it may read
# its own small files) and returns which images are theirs. ``list()`` leaves those out and
# ``prune`` leaves them alone; they are images all the same (get, rmi, containers).
RESERVERS: list[Callable[[ImageStore], Callable[[Image], bool]]] = []


# --- data written without an fsync per file ---------------------------------------------------

_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
_CLOCK_MARGIN = 60.0  # seconds: mtimes a little before the marker are suspect too


def current_boot_id() -> str:
    try:
        return _BOOT_ID.read_text().strip()
    except OSError:
        return ""


class Writeback:
    """Pulls publish blobs and layers by atomic renames but without an fsync per file: an
    fsync of a pull's few hundred MB costs about a second of disk time, more than the pull
    itself. Until the kernel writes them back, a power cut (not a crash of the daemon: the
    page cache outlives that) could leave some of those files empty or short.

    So: before a pull writes such data, a marker file (fsynced) records the boot and the
    time; when no pull is running, one ``syncfs`` in a background thread makes everything
    durable and removes the marker. At start-up, a marker from an earlier boot means the
    machine went down with data possibly unwritten: ``suspect_since`` says from when, and
    ``ImageStore.reconcile`` re-hashes the blobs and drops the layers written since then
    (the layers are unpacked again from their verified blobs).

    Methods are blocking except ``end`` (called from the event loop: it only starts the
    thread)."""

    def __init__(self, marker: Path, fs_path: Path) -> None:
        self.marker = marker
        self.fs_path = fs_path
        self._lock = threading.Lock()
        self._active = 0  # pulls writing unsynced data now
        self._generation = 0  # bumped by every begin: a sync that saw an older one is stale
        self._syncing = False
        self._idle = threading.Event()
        self._idle.set()
        self._nursery: trio.Nursery | None = None
        self._token: trio.lowlevel.TrioToken | None = None

    def attach(self, nursery: trio.Nursery) -> None:
        """Run the background syncs as tasks of ``nursery`` (the daemon's): a sync is then a
        worker thread owned by a task there, cancelled with the daemon. Unattached (a store
        used outside a daemon), a sync runs in a thread of its own."""
        self._nursery = nursery
        self._token = trio.lowlevel.current_trio_token()

    def begin(self) -> None:
        with self._lock:
            self._active += 1
            self._generation += 1
            if self._marker_boot() == current_boot_id():
                return
        try:
            self.marker.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(self.marker, {"boot_id": current_boot_id(), "since": time.time()})
        except BaseException:
            with self._lock:
                self._active -= 1
            raise

    def end(self) -> None:
        with self._lock:
            self._active -= 1
            self._start_sync()

    def sync_soon(self) -> None:
        """Start the background sync if a marker of this boot is left (a daemon that was
        killed before its sync finished)."""
        if self._marker_boot() == current_boot_id():
            with self._lock:
                self._start_sync()

    def _start_sync(self) -> None:
        """With the lock held: sync in the background unless a pull or a sync is running.
        May be called from a worker thread (``sync_soon``) or from the event loop."""
        if self._active or self._syncing:
            return
        self._syncing = True
        self._idle.clear()
        nursery, token = self._nursery, self._token
        if nursery is None or token is None:
            threading.Thread(target=self._sync, name="engine-writeback", daemon=True).start()
            return
        token.run_sync_soon(nursery.start_soon, self._sync_task)

    async def _sync_task(self) -> None:
        await trio.to_thread.run_sync(self._sync)

    def _sync(self) -> None:
        while True:
            with self._lock:
                seen = self._generation
            try:
                syncfs(self.fs_path)
            except OSError:
                with self._lock:
                    self._done_syncing()
                return  # the marker stays: the next start-up checks
            with self._lock:
                if self._generation == seen or self._active:
                    if self._generation == seen and not self._active:
                        self._remove_marker()
                    self._done_syncing()
                    return
            # a pull began and ended meanwhile: sync once more for its data

    def _remove_marker(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.marker.unlink()
            fsync_dir(self.marker.parent)

    def _done_syncing(self) -> None:
        self._syncing = False
        self._idle.set()

    def wait_idle(self, timeout: float) -> bool:
        """Wait for the background sync (tests, shutdown); True when none is running."""
        return self._idle.wait(timeout)

    def _marker_boot(self) -> str | None:
        try:
            return str(read_json(self.marker).get("boot_id", ""))
        except (OSError, ValueError, AttributeError):
            return None

    def suspect_since(self) -> float | None:
        """With a marker from an earlier boot: the time from which files may be damaged."""
        try:
            doc = read_json(self.marker)
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return 0.0  # an unreadable marker: suspect everything
        if not isinstance(doc, dict) or doc.get("boot_id") == current_boot_id():
            return None if isinstance(doc, dict) else 0.0
        try:
            return max(0.0, float(doc.get("since", 0.0)) - _CLOCK_MARGIN)
        except (TypeError, ValueError):
            return 0.0

    def clear(self) -> None:
        with self._lock:
            self._remove_marker()


@attrs.frozen
class NewImage:
    """One image to add: what ``add_images`` needs, already checked by ``_prepare``."""

    manifest_bytes: bytes
    manifest_media_type: str
    config_bytes: bytes
    names: list[Reference]
    index_digest: str | None = None
    repo_digests: bool = True


@attrs.frozen
class _Prepared:
    spec: NewImage
    manifest: Manifest
    manifest_digest: str
    config_digest: str


class ImageStore:
    def __init__(self, layout: Layout, content: ContentStore, storage: StorageDriver) -> None:
        """Loads the records (blocking: construct before the trio loop or in a thread)."""
        self.layout = layout
        self.content = content
        self.storage = storage
        self._lock = trio.Lock()
        self._layer_locks: dict[str, trio.Lock] = {}
        self._leased: Counter[str] = Counter()
        self.writeback = Writeback(layout.images_dir / "unsynced.json", layout.root)
        self._images: dict[str, Image] = self._load()
        self._reservers = [attach(self) for attach in RESERVERS]

    def reserved(self, image: Image) -> bool:
        """An image a part of the daemon keeps for itself (see ``RESERVERS``)."""
        return any(is_reserved(image) for is_reserved in self._reservers)

    # --- loading and start-up --------------------------------------------------------------

    def _load(self) -> dict[str, Image]:
        images: dict[str, Image] = {}
        for record in rec.read_state(self.layout.images_dir):
            try:
                images[record["id"]] = rec.from_record(record, self.content)
            except NotFound:
                continue  # config blob gone: reconcile drops the record from disk
        return images

    async def reconcile(self) -> list[str]:
        """Start-up check: drop records whose blobs are gone, unpack layers that are missing
        from the storage driver but whose blobs are here, clean write leftovers. Returns the
        IDs of dropped images."""
        async with self._lock:
            await self._recheck_after_power_loss()
            records = await trio.to_thread.run_sync(rec.read_state, self.layout.images_dir)
            kept: dict[str, Image] = {}
            dropped: list[str] = []
            for record in records:
                image = await self._check_record(record)
                if image is None:
                    dropped.append(record["id"])
                else:
                    kept[image.id] = image
            await trio.to_thread.run_sync(rec.write_state, self.layout.images_dir, kept)
            self._images = kept
            await trio.to_thread.run_sync(self._clean_leftovers)
            return dropped

    async def _check_record(self, record: dict[str, Any]) -> Image | None:
        def blobs_ok() -> Image | None:
            try:
                image = rec.from_record(record, self.content)
            except (NotFound, InvalidArgument, KeyError):
                return None
            return image if all(self.content.has(d) for d in image.blobs()) else None

        image = await trio.to_thread.run_sync(blobs_ok)
        if image is None:
            return None
        for digest, diff_id in zip(image.layer_digests, image.diff_ids, strict=True):
            await self._ensure_layer(digest, diff_id)
        return image

    async def _recheck_after_power_loss(self) -> None:
        """Blobs and layers written without an fsync shortly before the machine went down
        may be damaged: delete the blobs that no longer match their digest and the layers
        written since (reconcile then drops images whose blobs are gone and unpacks the
        others' layers again)."""
        since = await trio.to_thread.run_sync(self.writeback.suspect_since)
        if since is None:
            await trio.to_thread.run_sync(self.writeback.sync_soon)
            return
        await trio.to_thread.run_sync(self._recheck_blobs, since)
        for diff_id in await self.storage.list_layers():
            when = await self.storage.layer_written_at(diff_id)
            if when is None or when >= since:
                await self._remove_layer(diff_id)
        await trio.to_thread.run_sync(self.writeback.clear)

    def _recheck_blobs(self, since: float) -> None:
        for digest in list(self.content.digests()):
            path = self.content.path(digest)
            with contextlib.suppress(FileNotFoundError):
                if path.stat().st_mtime >= since and file_digest(path) != digest:
                    self.content.delete(digest)

    def _clean_leftovers(self) -> None:
        self.content.clean_ingest(keep_partials=True)
        rec.clean_temp_files(self.layout.images_dir)

    # --- leases ----------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def lease(self, digests: Iterable[str]) -> AsyncIterator[None]:
        """Keep blobs (or layer diff_ids) from being freed while an operation that has not
        recorded them yet is running."""
        held = list(digests)
        self.hold(held)
        try:
            yield
        finally:
            self.release(held)

    def hold(self, digests: Iterable[str]) -> None:
        """Lease blobs or layers (call in the trio thread; from a worker thread use
        ``trio.from_thread.run_sync(store.hold, ...)``). Pair with ``release``."""
        self._leased.update(digests)

    def release(self, digests: Iterable[str]) -> None:
        self._leased.subtract(digests)
        self._leased += Counter()  # drop zero counts

    async def discard_unreferenced(self, digests: Iterable[str]) -> None:
        """Delete blobs an operation stored but could not record (a failed load), unless an
        image or another lease uses them: a failure leaves no debris behind."""
        async with self._lock:
            keep = set(self._leased)
            for image in self._images.values():
                keep |= image.blobs()
            doomed = sorted(set(digests) - keep)
            await trio.to_thread.run_sync(self._delete_blobs, doomed)

    # --- adding ----------------------------------------------------------------------------

    async def add_image(
        self,
        manifest_bytes: bytes,
        manifest_media_type: str,
        config_bytes: bytes,
        names: list[Reference],
        *,
        index_digest: str | None = None,
        repo_digests: bool = True,
    ) -> Image:
        """Record an image whose layer blobs are in the content store (the manifest and
        config are stored here when missing). Unpacks layers not yet unpacked. Names move
        from their old images to this one. ``repo_digests`` records ``name@digest`` for each
        name (what a pull does; ``docker load`` does not)."""
        spec = NewImage(
            manifest_bytes,
            manifest_media_type,
            config_bytes,
            list(names),
            index_digest,
            repo_digests,
        )
        return (await self.add_images([spec]))[0]

    async def add_images(self, specs: list[NewImage]) -> list[Image]:
        """Add several images all or nothing: either every one is recorded or none is."""
        # Lease what this call writes before writing it, so a concurrent prune cannot free
        # it between the write and the record.
        own = [sha256_digest(b) for s in specs for b in (s.manifest_bytes, s.config_bytes)]
        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(self.lease(own))
            prepared = [await trio.to_thread.run_sync(self._prepare, s) for s in specs]
            blobs = [d for p in prepared for d in self._blobs_of(p)]
            diff_ids = [d for p in prepared for d in self._diff_ids_of(p)]
            await stack.enter_async_context(self.lease(blobs + diff_ids))
            sizes = [await self._ensure_layers(p) for p in prepared]
            async with self._lock:
                images = dict(self._images)
                added = [self._merge(images, p, s) for p, s in zip(prepared, sizes, strict=True)]
                await self._commit(images)
        return [self._images[image.id] for image in added]

    def _prepare(self, spec: NewImage) -> _Prepared:
        """Parse and check one image (blocking): digests agree, every blob is present."""
        manifest = parse_manifest(spec.manifest_bytes, spec.manifest_media_type)
        if not isinstance(manifest, Manifest):
            raise InvalidArgument(
                f"{spec.manifest_media_type} is an index, not an image manifest: choose one of "
                "its manifests (a platform) and add that"
            )
        config_digest = sha256_digest(spec.config_bytes)
        if config_digest != manifest.config.digest:
            raise InvalidArgument(
                f"the config given ({config_digest}) is not the manifest's config "
                f"({manifest.config.digest})"
            )
        config = parse_config(spec.config_bytes)
        if len(config.rootfs.diff_ids) != len(manifest.layers):
            raise InvalidArgument(
                f"the manifest lists {len(manifest.layers)} layers but the config's rootfs has "
                f"{len(config.rootfs.diff_ids)} diff_ids; the image is malformed"
            )
        manifest_digest = self.content.write(spec.manifest_bytes)
        self.content.write(spec.config_bytes, config_digest)
        missing = [layer.digest for layer in manifest.layers if not self.content.has(layer.digest)]
        if missing:
            raise NotFound(
                f"layer blob(s) {', '.join(missing)} are not in the content store; fetch them "
                "before adding the image"
            )
        return _Prepared(spec, manifest, manifest_digest, config_digest)

    @staticmethod
    def _blobs_of(p: _Prepared) -> list[str]:
        found = [p.manifest_digest, p.config_digest, *(lay.digest for lay in p.manifest.layers)]
        if p.spec.index_digest:
            found.append(p.spec.index_digest)
        return found

    @staticmethod
    def _diff_ids_of(p: _Prepared) -> list[str]:
        return list(parse_config(p.spec.config_bytes).rootfs.diff_ids)

    async def _ensure_layers(self, p: _Prepared) -> list[int]:
        diff_ids = self._diff_ids_of(p)
        return [
            await self._ensure_layer(layer.digest, diff_id)
            for layer, diff_id in zip(p.manifest.layers, diff_ids, strict=True)
        ]

    async def _ensure_layer(self, blob_digest: str, diff_id: str) -> int:
        """Unpack one layer unless the driver has it; returns its size in bytes."""
        lock = self._layer_locks.setdefault(diff_id, trio.Lock())
        async with lock:
            if await self.storage.has_layer(diff_id):
                known = self._known_layer_size(diff_id)
                if known is not None:
                    return known
                with contextlib.suppress(NotFound):
                    return int((await self.storage.layer_info(diff_id)).size)
                return await trio.to_thread.run_sync(self.content.size, blob_digest)
            info = await self.storage.unpack_layer(
                self.content.path(blob_digest), expected_diff_id=diff_id
            )
            return info.size

    def _known_layer_size(self, diff_id: str) -> int | None:
        for image in self._images.values():
            for d, size in zip(image.diff_ids, image.layer_sizes, strict=False):
                if d == diff_id:
                    return size
        return None

    def _merge(self, images: dict[str, Image], p: _Prepared, sizes: list[int]) -> Image:
        """Put the image into ``images`` (a working copy) and move its names onto it."""
        image = images.get(p.config_digest)
        if image is None:
            config = parse_config(p.spec.config_bytes)
            image = rec.new_image(
                config=config,
                config_digest=p.config_digest,
                manifest_digest=p.manifest_digest,
                manifest_media_type=p.manifest.media_type,
                layer_digests=[layer.digest for layer in p.manifest.layers],
                layer_sizes=sizes,
                index_digest=p.spec.index_digest,
            )
            images[image.id] = image
        pulled_digest = p.spec.index_digest or p.manifest_digest
        for name in p.spec.names:
            if name.tag is not None:
                _move_name(images, image.id, str(name.repository().with_tag(name.tag)), "tag")
            if name.digest is not None:
                _move_name(images, image.id, str(name.repository().with_digest(name.digest)), "dig")
            elif p.spec.repo_digests:
                ref = str(name.repository().with_digest(pulled_digest))
                _move_name(images, image.id, ref, "dig")
        return images[image.id]

    async def _commit(self, images: dict[str, Image]) -> None:
        """Write the new state, then make it the current one (lock held)."""
        await trio.to_thread.run_sync(rec.write_state, self.layout.images_dir, images)
        self._images = images

    # --- lookups ---------------------------------------------------------------------------

    def get(self, ref_or_id: str) -> Image:
        """An image by ``name[:tag]``, ``name@digest``, full or short ID."""
        return self.resolve(ref_or_id)[0]

    def list(self, *, reserved: bool = False) -> list[Image]:
        """The images, newest first; ``reserved`` ones (``RESERVERS``) only when asked."""
        found = self._images.values() if reserved else [i for i in self._images.values() if not self.reserved(i)]
        return sorted(found, key=lambda i: (i.created, i.id), reverse=True)

    def resolve(self, ref_or_id: str) -> tuple[Image, Reference | None]:
        """The image, and the reference that named it (None when named by ID)."""
        if not isinstance(ref_or_id, str) or not ref_or_id:
            raise InvalidArgument("an image name or ID is required")
        if is_full_image_id(ref_or_id):
            image = self._images.get(normalize_image_id(ref_or_id))
            if image is None:
                raise NotFound(f"no such image: {ref_or_id}")
            return image, None
        try:
            ref = parse_reference(ref_or_id)
        except InvalidArgument:
            if not is_image_id_prefix(ref_or_id):
                raise
            ref = None
        if ref is not None:
            image = self._by_reference(ref)
            if image is not None:
                return image, ref
        if is_image_id_prefix(ref_or_id):
            return self._by_id_prefix(ref_or_id), None
        raise NotFound(
            f"no such image: {ref_or_id} (see the list of images; pull or load it first)"
        )

    def _by_reference(self, ref: Reference) -> Image | None:
        if ref.digest is not None:
            wanted = str(ref.repository().with_digest(ref.digest))
            key = "repo_digests"
        else:
            wanted = str(ref)
            key = "repo_tags"
        for image in self._images.values():
            if wanted in getattr(image, key):
                return image
        return None

    def _by_id_prefix(self, prefix: str) -> Image:
        full = normalize_image_id(prefix)
        matches = [i for i in self._images.values() if i.id.startswith(full)]
        if not matches:
            raise NotFound(f"no such image: {prefix}")
        if len(matches) > 1:
            raise InvalidArgument(
                f"the short ID {prefix} matches {len(matches)} images; give more digits"
            )
        return matches[0]

    # --- names -----------------------------------------------------------------------------

    async def tag(self, source: str, target: str) -> Image:
        """``docker tag``: ``target`` (a name, ``:latest`` by default) moves to the image."""
        ref = parse_reference(target)
        if ref.digest is not None:
            raise InvalidArgument(f"cannot tag with a digest reference {target!r}: use a tag")
        async with self._lock:
            image = self.get(source)
            images = dict(self._images)
            _move_name(images, image.id, str(ref), "tag")
            await self._commit(images)
            return self._images[image.id]

    async def untag(self, ref: str) -> Image:
        """Remove one name (tag or ``name@digest``) from its image; the image stays."""
        async with self._lock:
            image, parsed = self.resolve(ref)
            if parsed is None:
                raise InvalidArgument(f"{ref!r} is an image ID, not a name: nothing to untag")
            images = dict(self._images)
            images[image.id] = _without(image, {_ref_key(parsed)})
            await self._commit(images)
            return self._images[image.id]

    # --- removal ---------------------------------------------------------------------------

    async def remove(
        self,
        ref_or_id: str,
        *,
        force: bool = False,
        in_use: Callable[[str], bool] = _never_in_use,
    ) -> builtins.list[dict[str, str]]:
        """``docker rmi``: by name it untags, and deletes the image once no name is left; by
        ID it removes every name of a single-repository image (several repositories need
        ``force``). An image a container uses is refused unless ``force``; with ``force`` its
        names go but the image and its layers stay (dangling) until no container uses it.
        Returns docker's report: ``[{"Untagged": name}, {"Deleted": id}]``."""
        async with self._lock:
            image, ref = self.resolve(ref_or_id)
            images = dict(self._images)
            report: builtins.list[dict[str, str]] = []
            used = in_use(image.id)
            if ref is not None:
                if used and not force and _single_reference(image):
                    raise Conflict(
                        f"unable to remove {ref.familiar()}: a container uses image "
                        f"{image.short_id}; remove the container first or use force"
                    )
                image = self._untag_by_name(images, image, ref, report)
                if image.repo_tags or image.repo_digests:
                    await self._commit(images)
                    return report
            else:
                if not force and not _single_reference(image):
                    raise Conflict(
                        f"unable to delete {image.short_id}: it is referenced in several "
                        "repositories; remove it by name, or use force"
                    )
                if used and not force:
                    raise Conflict(
                        f"unable to delete {image.short_id}: a container uses it; remove the "
                        "container first or use force"
                    )
                report += [{"Untagged": _familiar(n)} for n in image.repo_tags + image.repo_digests]
                images[image.id] = _without(image, set(image.repo_tags + image.repo_digests))
            if used:
                await self._commit(images)  # kept dangling while in use
                return report
            del images[image.id]
            await self._commit(images)
            report.append({"Deleted": image.id})
            await self._free(image)
            return report

    def _untag_by_name(
        self,
        images: dict[str, Image],
        image: Image,
        ref: Reference,
        report: builtins.list[dict[str, str]],
    ) -> Image:
        drop = {_ref_key(ref)}
        if ref.digest is None:
            # Docker: with the repository's last tag gone, its digest names go as well.
            others = [t for t in image.repo_tags if t not in drop]
            if not any(parse_reference(t).name == ref.name for t in others):
                drop |= {d for d in image.repo_digests if parse_reference(d).name == ref.name}
        report += [{"Untagged": _familiar(n)} for n in sorted(drop)]
        images[image.id] = _without(image, drop)
        return images[image.id]

    async def _free(self, removed: Image) -> int:
        """Delete the removed image's blobs and layers that nothing else uses; returns the
        bytes freed (layers at their unpacked size)."""
        keep_blobs, keep_layers = self._referenced()
        freed = 0
        for diff_id, size in reversed(
            list(zip(removed.diff_ids, removed.layer_sizes, strict=False))
        ):
            if diff_id not in keep_layers:
                keep_layers.add(diff_id)  # a layer listed twice is freed once
                if await self._remove_layer(diff_id):
                    freed += size
        doomed = sorted(removed.blobs() - keep_blobs)
        await trio.to_thread.run_sync(self._delete_blobs, doomed)
        return freed

    def _referenced(self) -> tuple[set[str], set[str]]:
        """(blobs, layers) that an image references or a lease holds: what must stay."""
        keep_blobs = set(self._leased)
        keep_layers = set(self._leased)
        for image in self._images.values():
            keep_blobs |= image.blobs()
            keep_layers |= set(image.diff_ids)
        return keep_blobs, keep_layers

    async def _remove_layer(self, diff_id: str) -> bool:
        """Remove a layer; a layer still mounted by some container stays for a later prune
        (the image record is gone already, so this is not the caller's failure)."""
        try:
            await self.storage.remove_layer(diff_id)
        except Conflict:
            return False
        return True

    def _delete_blobs(self, digests: builtins.list[str]) -> None:
        for digest in digests:
            self.content.delete(digest)

    async def prune(
        self, dangling_only: bool = True, *, in_use: Callable[[str], bool] = _never_in_use
    ) -> dict[str, Any]:
        """``docker image prune [-a]``: remove dangling (or, with ``dangling_only=False``,
        all) images no container uses, then free blobs and layers that no image
        references (debris of interrupted pulls or crashes)."""
        deleted: builtins.list[dict[str, str]] = []
        reclaimed = 0
        async with self._lock:
            for image in list(self._images.values()):
                if (dangling_only and not image.dangling) or in_use(image.id) or self.reserved(image):
                    continue
                images = dict(self._images)
                del images[image.id]
                await self._commit(images)
                deleted.append({"Deleted": image.id})
                reclaimed += await self._free(image)
            reclaimed += await self._collect_garbage()
        return {"ImagesDeleted": deleted, "SpaceReclaimed": reclaimed}

    async def _collect_garbage(self) -> int:
        """Free blobs and layers no image references and no lease holds (lock held)."""
        keep_blobs, keep_layers = self._referenced()
        freed = 0
        for diff_id in await self.storage.list_layers():
            if diff_id not in keep_layers:
                await self._remove_layer(diff_id)

        def sweep() -> int:
            total = 0
            for digest in list(self.content.digests()):
                if digest not in keep_blobs:
                    with contextlib.suppress(NotFound):
                        total += self.content.size(digest)
                    self.content.delete(digest)
            return total

        freed += await trio.to_thread.run_sync(sweep)
        return freed

    # --- views -----------------------------------------------------------------------------

    def history(self, ref: str) -> builtins.list[dict[str, Any]]:
        return history_view(self.get(ref))

    def inspect(self, ref: str) -> dict[str, Any]:
        return inspect_view(self.get(ref))

    def usage(self) -> dict[str, Any]:
        """``docker system df`` for images: layers shared between images count once."""
        layer_sizes: dict[str, int] = {}
        for image in self._images.values():
            layer_sizes.update(zip(image.diff_ids, image.layer_sizes, strict=False))
        return {
            "Images": len(self._images),
            "Dangling": sum(1 for i in self._images.values() if i.dangling),
            "Layers": len(layer_sizes),
            "Size": sum(layer_sizes.values()),
        }


# --- helpers on the working copy of the state ----------------------------------------------


def _ref_key(ref: Reference) -> str:
    """The stored string for a name: ``name@digest`` when it has a digest, else name:tag."""
    if ref.digest is not None:
        return str(ref.repository().with_digest(ref.digest))
    return str(ref)


def _familiar(stored: str) -> str:
    return parse_reference(stored).familiar()


def _without(image: Image, names: set[str]) -> Image:
    return attrs.evolve(
        image,
        repo_tags=[t for t in image.repo_tags if t not in names],
        repo_digests=[d for d in image.repo_digests if d not in names],
    )


def _move_name(images: dict[str, Image], image_id: str, name: str, kind: str) -> None:
    """Give ``name`` to ``image_id``, taking it from whichever image had it."""
    field = "repo_tags" if kind == "tag" else "repo_digests"
    for other_id, other in list(images.items()):
        if other_id != image_id and name in getattr(other, field):
            images[other_id] = _without(other, {name})
    image = images[image_id]
    if name in getattr(image, field):
        return
    if kind == "tag":
        images[image_id] = attrs.evolve(image, repo_tags=[*image.repo_tags, name])
    else:
        images[image_id] = attrs.evolve(image, repo_digests=[*image.repo_digests, name])


def _single_reference(image: Image) -> bool:
    """Docker's rule: at most one tag, and every name in a single repository."""
    names = image.repo_tags + image.repo_digests
    repos = {parse_reference(n).name for n in names}
    return len(image.repo_tags) <= 1 and len(repos) <= 1
