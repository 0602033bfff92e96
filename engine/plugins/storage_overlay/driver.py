"""The ``overlay`` storage driver: layers unpacked once each, containers as overlay mounts.

On disk, under ``layout.storage_dir("overlay")``::

    layers/<hex>/diff           the unpacked layer (OCI whiteouts already overlay whiteouts)
    layers/<hex>/layer.json     {"diff_id", "size", "link"}; written before the dir appears
    layers/.unpack-*            unpacks in progress (or left by a crash; see cleanup_stale)
    layers/.removing-*          layers being deleted (renamed away first, so never half-seen)
    l/<link>                    short symlink -> ../layers/<hex>/diff (keeps mount options short)
    containers/<id>/upper,work  the container's writable layer
    containers/<id>/merged      the mount point handed to the runtime
    containers/<id>/layers.json the diff_ids it was mounted with (remove_layer checks them)

Blocking work (unpacking, walking, mount syscalls) runs in worker threads.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import logging
import math
import os
import re
import tempfile
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import IO, Any

import trio

from engine.errors import Conflict, InvalidArgument, NotFound
from engine.images.content import check_digest
from engine.plugin import Availability, LayerInfo, StaleReport, StorageUsage
from engine.store.atomic import read_json, syncfs, write_json_atomic
from engine.store.layout import Layout
from engine.store.rmtree import remove_tree, tree_bytes

from .mount import OverlayMounter, OverlaySpec, filesystem_of, is_mounted, read_mountinfo, unmount
from .unpack import TEMP_PREFIX, ChunkReader, UnpackResult, unpack_into, unpack_stream_into

REMOVING_PREFIX = ".removing-"
_CONTAINER_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_HEX_RE = re.compile(r"^[a-f0-9]{64}$")
_LINK_LEN = 10  # 50 random bits; 11 bytes per layer in legacy mount options

_STREAM_BUFFER = 8  # chunk lists (about 1 MiB each) queued between a download and its unpack
_READ_CHUNK = 1024 * 1024
# Per layer, sparse files at full size: far above real images, far below a disk-filling bomb.
DEFAULT_MAX_APPARENT_SIZE = 256 * 1024**3

log = logging.getLogger(__name__)


class _KeyedLocks:
    """One trio.Lock per key, dropped when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[trio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (trio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)


class OverlayDriver:
    """``engine.plugin.StorageDriver`` on native overlayfs.

    ``durable`` syncs the filesystem before a layer becomes visible, so a crash can't leave
    a visible layer with missing content (tests turn it off for speed).
    ``prefer_new_mount_api=False`` forces the mount(8) path (for tests of the fallback).
    ``max_apparent_size`` caps one layer's files, sparse files at their full size (a tiny
    layer may describe terabytes of holes; copying or exporting them would be real).
    """

    name = "overlay"

    def __init__(
        self,
        layout: Layout,
        *,
        durable: bool = True,
        prefer_new_mount_api: bool = True,
        max_apparent_size: int = DEFAULT_MAX_APPARENT_SIZE,
    ) -> None:
        self.layout = layout
        self.root = layout.storage_dir(self.name)
        self.layers_dir = self.root / "layers"
        self.links_dir = self.root / "l"
        self.containers_dir = self.root / "containers"
        self.durable = durable
        self.max_apparent_size = max_apparent_size
        self._mounter = OverlayMounter(prefer_new_api=prefer_new_mount_api)
        self._layer_locks = _KeyedLocks()
        self._container_locks = _KeyedLocks()
        # Streamed unpacks at once: one per CPU. More only take turns at the GIL; the layers
        # waiting meanwhile keep downloading into their ingest files.
        self._unpack_limiter = trio.CapacityLimiter(max(1, os.cpu_count() or 1))
        self._blob_diff_ids: dict[tuple[str, int, int, int], str] = {}
        self._debris: set[Path] = set()  # leftovers whose deletion failed: retried
        self._retrying = threading.Lock()

    # --- host check --------------------------------------------------------------------------

    def availability(self) -> Availability:
        try:
            with open("/proc/filesystems") as f:
                known = {line.split()[-1] for line in f if line.strip()}
        except OSError as e:
            return Availability.no(f"cannot read /proc/filesystems ({e}); is /proc mounted?")
        if "overlay" not in known:
            return Availability.no(
                "the kernel has no overlay filesystem loaded; run `modprobe overlay` "
                "(or choose another storage driver)"
            )
        fstype = filesystem_of(self.root)
        if fstype in ("overlay", "aufs"):
            return Availability.no(
                f"{self.root} is on {fstype}, which cannot hold an overlay upper layer; put "
                "--root on ext4, xfs, btrfs or tmpfs (e.g. a volume when running in a container)"
            )
        return Availability.yes()

    @property
    def mount_method(self) -> str:
        """How mounts are made: "new-mount-api", "mount8", or "unknown" before the first."""
        return {True: "new-mount-api", False: "mount8", None: "unknown"}[self._mounter.new_api]

    # --- paths -------------------------------------------------------------------------------

    def layer_dir(self, diff_id: str) -> Path:
        return self.layers_dir / check_digest(diff_id).removeprefix("sha256:")

    def container_dir(self, container_id: str) -> Path:
        if not isinstance(container_id, str) or not _CONTAINER_ID_RE.match(container_id):
            raise InvalidArgument(
                f"invalid container id {container_id!r}: use 1-128 letters, digits, '_', '.' "
                "or '-', starting with a letter or digit"
            )
        return self.containers_dir / container_id

    def layer_path(self, diff_id: str) -> Path:
        return self.layer_dir(diff_id)

    def container_layer_path(self, container_id: str) -> Path:
        return self.container_dir(container_id) / "upper"

    def container_ids(self) -> list[str]:
        return self._container_ids()

    def mountpoint(self, container_id: str) -> Path:
        return self.container_dir(container_id) / "merged"

    def _ensure_dirs(self) -> None:
        for path in (self.layers_dir, self.links_dir, self.containers_dir):
            path.mkdir(parents=True, exist_ok=True)

    # --- layers ------------------------------------------------------------------------------

    async def has_layer(self, diff_id: str) -> bool:
        return await trio.Path(self.layer_dir(diff_id) / "layer.json").exists()

    async def layer_written_at(self, diff_id: str) -> float | None:
        """When the layer was committed (its layer.json's mtime); None if it is not here."""
        try:
            st = await trio.Path(self.layer_dir(diff_id) / "layer.json").stat()
        except FileNotFoundError:
            return None
        return st.st_mtime

    async def layer_info(self, diff_id: str) -> LayerInfo:
        return await trio.to_thread.run_sync(self._layer_info_sync, diff_id)

    def _layer_info_sync(self, diff_id: str) -> LayerInfo:
        try:
            meta = read_json(self.layer_dir(diff_id) / "layer.json")
        except FileNotFoundError:
            raise NotFound(f"layer {diff_id} is not unpacked; pull its image again") from None
        return LayerInfo(diff_id=meta["diff_id"], size=int(meta["size"]))

    async def unpack_layer(self, blob: Path, *, expected_diff_id: str | None = None) -> LayerInfo:
        """Unpack ``blob`` unless its layer exists already; concurrent calls for the same
        diff_id (or, without one, the same blob file) share one unpack.

        Cancellation: polled between tar entries; the partial unpack is deleted.
        Errors: NotFound (no blob), DigestMismatch, UnsafeContent, InvalidArgument (not a
        tar), ResourceExhausted (disk full)."""
        if expected_diff_id is not None:
            check_digest(expected_diff_id)
            async with self._layer_locks.hold(expected_diff_id):
                if await self.has_layer(expected_diff_id):
                    return await self.layer_info(expected_diff_id)  # the blob isn't needed
                await trio.to_thread.run_sync(_blob_key, blob)  # NotFound, said plainly
                return await trio.to_thread.run_sync(self._unpack_sync, blob, expected_diff_id)
        blob_key = await trio.to_thread.run_sync(_blob_key, blob)
        async with self._layer_locks.hold("blob:" + blob_key[0]):
            known = self._blob_diff_ids.get(blob_key)
            if known is not None and await self.has_layer(known):
                return await self.layer_info(known)
            info = await trio.to_thread.run_sync(self._unpack_sync, blob, None)
            self._blob_diff_ids[blob_key] = info.diff_id
            return info

    def _unpack_sync(self, blob: Path, expected_diff_id: str | None) -> LayerInfo:
        self._ensure_dirs()
        temp, result = unpack_into(
            blob,
            self.layers_dir,
            expected_diff_id=expected_diff_id,
            check_cancelled=trio.from_thread.check_cancelled,
            max_apparent_size=self.max_apparent_size,
        )
        try:
            return self._commit_layer(temp, result.diff_id, result.size)
        finally:
            self._discard(temp)  # gone already unless we lost a race

    @contextlib.asynccontextmanager
    async def layer_stream(self, diff_id: str) -> AsyncIterator[LayerStream | None]:
        """Unpack a layer while its blob downloads: yields a ``LayerStream`` (a tee for
        ``DistributionClient.fetch_blob``), or None when the layer is unpacked already.

        The body downloads the blob through the stream and then calls ``finish`` with the
        verified blob: only then is the layer committed (after its diff_id is checked too).
        Leaving the body any other way discards the partial unpack. Concurrent unpacks of
        the same diff_id wait for each other, as in ``unpack_layer``.
        Errors: those of ``unpack_layer``, raised by ``finish``; an unpack error is held back
        until the download is complete, so that a corrupt download is reported as what it
        is (the client's DigestMismatch) rather than as a broken tar."""
        check_digest(diff_id)
        async with self._layer_locks.hold(diff_id):
            if await self.has_layer(diff_id):
                yield None
                return
            stream = LayerStream()
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._run_stream, diff_id, stream)
                    try:
                        yield stream
                    finally:
                        if not stream.finished:
                            nursery.cancel_scope.cancel()  # the worker deletes its temp dir
            finally:
                stream.close_files()  # the worker is done with them

    async def _run_stream(self, diff_id: str, stream: LayerStream) -> None:
        info = await trio.to_thread.run_sync(
            self._unpack_stream_sync, stream, diff_id, limiter=self._unpack_limiter
        )
        stream._done(info)

    def _unpack_stream_sync(self, stream: LayerStream, diff_id: str) -> LayerInfo:
        stream.unpacking = True  # from now on queued bytes are taken soon
        self._ensure_dirs()
        feed = _Feed(stream._receive)
        try:
            temp, result = self._extract_feed(feed, diff_id)
        finally:
            feed.close()
        try:
            return self._commit_layer(temp, result.diff_id, result.size, sync=False)
        finally:
            self._discard(temp)  # gone already unless we lost a race

    def _extract_feed(self, feed: _Feed, diff_id: str) -> tuple[Path, UnpackResult]:
        while True:
            try:
                return unpack_stream_into(
                    ChunkReader(feed.next_chunk, feed.read_direct),
                    self.layers_dir,
                    expected_diff_id=diff_id,
                    what=f"layer {diff_id}",
                    max_apparent_size=self.max_apparent_size,
                )
            except _Restart:
                pass  # the download started over: so does the unpack
            except Exception:
                # The bytes are not verified yet: a corrupt download must be reported as
                # the client's DigestMismatch, not as a broken tar, and bytes kept from a bad
                # earlier attempt are followed by a fresh download. So the error stands only
                # if the download ends without starting over.
                if not feed.wait_for_restart():
                    raise
            feed.restart()

    def _commit_layer(
        self, temp: Path, diff_id: str, size: int, *, sync: bool = True
    ) -> LayerInfo:
        final = self.layer_dir(diff_id)
        info = LayerInfo(diff_id=diff_id, size=size)
        if final.exists():
            return self._layer_info_sync(diff_id)
        link = self._new_link(final)
        write_json_atomic(
            temp / "layer.json",
            {"diff_id": diff_id, "size": size, "link": link},
            durable=False,
        )
        if self.durable and sync:
            syncfs(temp)
        try:
            os.rename(temp, final)
        except OSError:
            (self.links_dir / link).unlink(missing_ok=True)
            if final.exists():  # a concurrent unpack of the same layer won the race
                return self._layer_info_sync(diff_id)
            raise
        return info

    def _new_link(self, final: Path) -> str:
        """A fresh short name in l/ pointing at the (future) layer's diff dir."""
        while True:
            link = base64.b32encode(os.urandom(10)).decode().lower()[:_LINK_LEN]
            try:
                os.symlink(f"../layers/{final.name}/diff", self.links_dir / link)
            except FileExistsError:
                continue
            return link

    async def remove_layer(self, diff_id: str) -> None:
        """Delete a layer; a missing layer is fine. Conflict while a mounted container
        uses it."""
        async with self._layer_locks.hold(diff_id):
            await trio.to_thread.run_sync(self._remove_layer_sync, diff_id)

    def _remove_layer_sync(self, diff_id: str) -> None:
        final = self.layer_dir(diff_id)
        if not final.exists():
            return
        users = self._mounted_users(diff_id)
        if users:
            raise Conflict(
                f"layer {diff_id} is in use by mounted container(s) {', '.join(users)}; "
                "stop and unmount them first",
                containers=users,
            )
        try:
            link = read_json(final / "layer.json").get("link")
        except (OSError, ValueError):
            link = None
        doomed = Path(tempfile.mkdtemp(prefix=REMOVING_PREFIX, dir=self.layers_dir))
        os.rename(final, doomed / "layer")  # invisible at once; deletion may take a while
        if link:
            (self.links_dir / link).unlink(missing_ok=True)
        self._discard(doomed)

    def _mounted_users(self, diff_id: str) -> list[str]:
        users = []
        for cid in self._mounted_container_ids():
            try:
                layers = read_json(self.containers_dir / cid / "layers.json")
            except (OSError, ValueError):
                continue
            if diff_id in layers:
                users.append(cid)
        return users

    async def list_layers(self) -> list[str]:
        return await trio.to_thread.run_sync(self._list_layers_sync)

    def _list_layers_sync(self) -> list[str]:
        if not self.layers_dir.exists():
            return []
        return sorted(
            "sha256:" + entry.name
            for entry in os.scandir(self.layers_dir)
            if _HEX_RE.match(entry.name) and os.path.exists(os.path.join(entry.path, "layer.json"))
        )

    # --- containers ----------------------------------------------------------------------------

    async def mount(self, container_id: str, layers: list[str], *, read_only: bool = False) -> Path:
        """Mount ``layers`` (bottom first) plus the container's writable layer (unless
        ``read_only``) at ``containers/<id>/merged`` and return it. Idempotent.

        Errors: NotFound for a layer that is not unpacked; RuntimeFailure from the kernel."""
        merged = self.mountpoint(container_id)
        for diff_id in layers:
            check_digest(diff_id)
        async with self._container_locks.hold(container_id):
            await self._mounter.prepare_and_mount(
                functools.partial(self._prepare_mount, container_id, list(layers), read_only)
            )
        return merged

    def _prepare_mount(
        self, container_id: str, layers: list[str], read_only: bool
    ) -> OverlaySpec | None:
        """Create the container's dirs and work out the mount; None if mounted already."""
        cdir = self.container_dir(container_id)
        merged = cdir / "merged"
        if is_mounted(merged):
            return None
        self._ensure_dirs()
        links = [self._link_for(diff_id) for diff_id in layers]
        for sub, mode in (("upper", 0o755), ("work", 0o700), ("merged", 0o755), ("empty", 0o755)):
            (cdir / sub).mkdir(mode=mode, parents=True, exist_ok=True)
        write_json_atomic(cdir / "layers.json", layers, durable=False)
        lower = list(reversed(links))  # overlay lists the topmost layer first
        empty = f"../containers/{container_id}/empty"
        if read_only:
            # Overlay needs two lowers when there is no upper: pad with an empty dir.
            lower = lower + [empty] * (2 - len(lower)) if len(lower) < 2 else lower
            return OverlaySpec(merged, self.links_dir, lower)
        return OverlaySpec(
            merged, self.links_dir, lower or [empty], upper=cdir / "upper", work=cdir / "work"
        )

    def _link_for(self, diff_id: str) -> str:
        """The layer's short link name, recreating the l/ entry if a crash lost it."""
        layer = self.layer_dir(diff_id)
        try:
            link = str(read_json(layer / "layer.json")["link"])
        except FileNotFoundError:
            raise NotFound(
                f"layer {diff_id} is not unpacked; pull the image again to restore it"
            ) from None
        path = self.links_dir / link
        if not path.is_symlink():
            with contextlib.suppress(FileExistsError):
                os.symlink(f"../layers/{layer.name}/diff", path)
        return link

    async def unmount(self, container_id: str) -> None:
        """Unmount the container's root filesystem; not mounted is fine."""
        merged = self.mountpoint(container_id)
        async with self._container_locks.hold(container_id):
            await trio.to_thread.run_sync(unmount, merged)

    async def remove_container(self, container_id: str) -> None:
        """Unmount and delete the container's writable layer; a missing one is fine."""
        cdir = self.container_dir(container_id)
        async with self._container_locks.hold(container_id):
            await trio.to_thread.run_sync(self._remove_container_sync, cdir)

    def _remove_container_sync(self, cdir: Path) -> None:
        unmount(cdir / "merged")
        if not cdir.exists():
            return
        doomed = Path(tempfile.mkdtemp(prefix=REMOVING_PREFIX, dir=self.containers_dir))
        os.rename(cdir, doomed / "container")
        self._discard(doomed)

    async def changes(self, container_id: str) -> list[tuple[str, str]]:
        """docker diff: the container's writable layer as (A|C|D, path)."""
        from .changes import changes

        cdir = self.container_dir(container_id)
        lowers = await trio.to_thread.run_sync(self._lower_dirs, cdir)
        return await trio.to_thread.run_sync(changes, cdir / "upper", lowers)

    async def diff_layer(self, container_id: str, dest: Path) -> None:
        """Write the container's writable layer as an uncompressed OCI layer tar."""
        from .changes import write_layer

        await trio.to_thread.run_sync(write_layer, self.container_dir(container_id) / "upper", dest)

    def _lower_dirs(self, cdir: Path) -> list[Path]:
        try:
            layers = read_json(cdir / "layers.json")
        except FileNotFoundError:
            return []
        return [self.layer_dir(diff_id) / "diff" for diff_id in layers]

    # --- accounting and start-up -------------------------------------------------------------------

    async def usage(self) -> StorageUsage:
        return await trio.to_thread.run_sync(self._usage_sync)

    def _usage_sync(self) -> StorageUsage:
        layers = self._list_layers_sync()
        layers_bytes = 0
        for diff_id in layers:
            with contextlib.suppress(OSError, NotFound, KeyError, ValueError):
                layers_bytes += self._layer_info_sync(diff_id).size
        containers = self._container_ids()
        containers_bytes = sum(tree_bytes(self.containers_dir / c / "upper") for c in containers)
        return StorageUsage(
            layers=len(layers),
            layers_bytes=layers_bytes,
            containers=len(containers),
            containers_bytes=containers_bytes,
        )

    def _container_ids(self) -> list[str]:
        if not self.containers_dir.exists():
            return []
        return sorted(
            e.name
            for e in os.scandir(self.containers_dir)
            if e.is_dir(follow_symlinks=False) and _CONTAINER_ID_RE.match(e.name)
        )

    def _mounted_container_ids(self) -> list[str]:
        prefix = str(self.containers_dir) + "/"
        found = []
        for entry in read_mountinfo():
            point = entry.mount_point
            if point.startswith(prefix) and point.endswith("/merged"):
                cid = point[len(prefix) : -len("/merged")]
                if "/" not in cid:
                    found.append(cid)
        return sorted(set(found))

    async def cleanup_stale(self) -> StaleReport:
        """Start-up reconciliation: delete unpacks and removals a crash interrupted and l/
        links whose layer is gone; report which containers are still mounted (the caller
        adopts or unmounts them)."""
        return await trio.to_thread.run_sync(self.cleanup_stale_sync)

    def cleanup_stale_sync(self) -> StaleReport:
        removed: list[str] = []
        failed: list[str] = []
        for parent in (self.layers_dir, self.containers_dir):
            if not parent.exists():
                continue
            for entry in os.scandir(parent):
                if entry.name.startswith((TEMP_PREFIX, REMOVING_PREFIX)):
                    if self._discard(Path(entry.path)):
                        removed.append(entry.path)
                    else:
                        failed.append(entry.path)
        if self.links_dir.exists():
            for entry in os.scandir(self.links_dir):
                if entry.is_symlink() and not os.path.exists(entry.path):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.path)
                    removed.append(entry.path)
        return StaleReport(
            removed=sorted(removed), mounted=self._mounted_container_ids(), failed=sorted(failed)
        )

    def _discard(self, debris: Path) -> bool:
        """Delete ``debris`` (a temp or ``.removing-*`` dir, invisible to everything else).
        It is the driver's own business: a failure is logged, not raised, and the debris is
        tried again after the next removal and at every start (``cleanup_stale``). Also
        retries earlier failures. Returns whether ``debris`` is gone."""
        ok = self._try_remove(debris)
        if self._debris and self._retrying.acquire(blocking=False):  # one thread retries
            try:
                for earlier in sorted(self._debris - {debris}):
                    self._try_remove(earlier)
            finally:
                self._retrying.release()
        return ok

    def _try_remove(self, debris: Path) -> bool:
        try:
            remove_tree(debris)
        except Exception as e:  # noqa: BLE001 - the caller's operation succeeded regardless
            if debris not in self._debris:
                log.warning("cannot delete %s (retried later): %s", debris, e)
            self._debris.add(debris)
            return False
        self._debris.discard(debris)
        return True


# --- streaming a layer while it downloads ----------------------------------------------------

# ("begin", open partial file, offset) | ("data", offset, [bytes...]) | ("end", verified blob)
_Message = tuple[Any, ...]


class LayerStream:
    """The trio side of a streamed unpack: implements the registry client's ``BlobTee``.

    The download never waits for the unpack: when the unpack is behind (its queue is full)
    the bytes are not queued, and the unpack reads them from the ingest file later (from
    the page cache, as a rule). So downloads run at network speed and free their slot of
    the download limiter early, and the unpack runs at CPU speed."""

    def __init__(self) -> None:
        # Unbounded, but data is queued only while fewer than _STREAM_BUFFER lists wait:
        # begin/end are always queued, so no sender ever waits for the unpack.
        self._send, self._queue = trio.open_memory_channel[_Message](math.inf)
        self._queued = 0
        # Set by the worker thread once it runs: until then (it waits for a CPU) bytes are
        # not queued, they would only sit in memory; the worker reads them from the file.
        self.unpacking = False
        self._offset = 0
        self._files: list[IO[bytes]] = []
        self._finished = trio.Event()
        self._info: LayerInfo | None = None

    @property
    def finished(self) -> bool:
        return self._finished.is_set()

    async def begin(self, partial: Path, offset: int) -> None:
        # Opened here, so the unpack can read it even after it is renamed into the store.
        file = await trio.to_thread.run_sync(open, partial, "rb")
        self._files.append(file)
        self._offset = offset
        self._send.send_nowait(("begin", file, offset))

    async def data(self, chunks: list[bytes]) -> None:
        offset = self._offset
        self._offset += sum(len(c) for c in chunks)
        if self.unpacking and self._queued < _STREAM_BUFFER:
            self._queued += 1
            self._send.send_nowait(("data", offset, chunks))

    async def _receive(self) -> _Message:
        """The next message, for the worker thread (through ``trio.from_thread.run``)."""
        message = await self._queue.receive()
        if message[0] == "data":
            self._queued -= 1
        return message

    async def finish(self, blob: Path) -> LayerInfo:
        """``blob`` is verified: finish the unpack (bytes the stream missed are read from
        it), check the diff_id and commit the layer."""
        self._send.send_nowait(("end", blob))
        await self._finished.wait()
        assert self._info is not None
        return self._info

    def _done(self, info: LayerInfo) -> None:
        self._info = info
        self._finished.set()

    def close_files(self) -> None:
        for file in self._files:
            file.close()
        self._files.clear()


class _Restart(Exception):
    """The download started over from a point the unpack has passed."""


class _Feed:
    """The worker-thread side: the blob's bytes in order. Bytes that did not come through
    the queue (the kept part of a resumed download, bytes the download did not queue while
    the unpack was behind, a blob that another task fetched) are read from the file that
    holds them."""

    def __init__(self, receive: Callable[[], Awaitable[_Message]]) -> None:
        self._receive = receive
        self._consumed = 0
        self._ended = False
        self._file: IO[bytes] | None = None  # the current download attempt's ingest file
        self._blob: IO[bytes] | None = None  # the verified blob, after "end"
        self._backfill: tuple[IO[bytes], int] | None = None  # read the file up to there
        self._pending: list[bytes] = []  # queued bytes after the backfill, reversed
        self._restart_at: tuple[IO[bytes], int] | None = None

    def next_chunk(self) -> bytes:
        while True:
            if self._backfill is not None:
                chunk = self._read_backfill()
                if chunk:
                    self._consumed += len(chunk)
                    return chunk
            if self._pending:
                chunk = self._pending.pop()
                self._consumed += len(chunk)
                return chunk
            if self._ended:
                return b""
            self._handle(self._next_message())

    def _next_message(self) -> _Message:
        # Blocks this thread until the download sends more; cancelling the pull cancels it.
        return trio.from_thread.run(self._receive)

    def _handle(self, message: _Message) -> None:
        kind = message[0]
        if kind == "data":
            offset, chunks = message[1], message[2]
            if offset > self._consumed and self._file is not None:
                self._backfill = (self._file, offset)  # bytes the download did not queue
            self._pending = chunks[::-1]
        elif kind == "begin":
            file, offset = message[1], message[2]
            self._file = file
            if offset < self._consumed:
                self._restart_at = (file, offset)
                raise _Restart()
            if offset > self._consumed:
                self._backfill = (file, offset)
        elif kind == "end":
            self._ended = True
            self._blob = open(message[1], "rb")  # noqa: SIM115 - closed by close()
            size = os.fstat(self._blob.fileno()).st_size
            if size > self._consumed:
                self._backfill = (self._blob, size)

    def read_direct(self, buffer: Any) -> int | None:
        """The next bytes straight into ``buffer`` when they come from a file, else None."""
        if self._backfill is None:
            return None
        file, end = self._backfill
        wanted = min(len(buffer), end - self._consumed)
        view = memoryview(buffer).cast("B")[:wanted]
        n = os.preadv(file.fileno(), [view], self._consumed) if wanted > 0 else 0
        if n == 0:
            self._backfill = None
            return None
        self._consumed += n
        return n

    def _read_backfill(self) -> bytes:
        assert self._backfill is not None
        file, end = self._backfill
        wanted = min(_READ_CHUNK, end - self._consumed)
        chunk = os.pread(file.fileno(), wanted, self._consumed) if wanted > 0 else b""
        if not chunk:
            self._backfill = None
        return chunk

    def restart(self) -> None:
        """Start the bytes over: from the file the download kept, then the download."""
        assert self._restart_at is not None
        file, offset = self._restart_at
        self._restart_at = None
        self._consumed = 0
        self._pending = []
        self._backfill = (file, offset) if offset else None

    def wait_for_restart(self) -> bool:
        """After a failed unpack: drop what the download sends until it either starts over
        from before what the unpack consumed (True) or ends (False)."""
        self._backfill, self._pending = None, []
        while not self._ended:
            message = self._next_message()
            if message[0] == "end":
                self._ended = True
            elif message[0] == "begin":
                file, offset = message[1], message[2]
                self._file = file
                if offset < self._consumed:
                    self._restart_at = (file, offset)
                    return True
        return False

    def close(self) -> None:
        if self._blob is not None:
            self._blob.close()


def _blob_key(blob: Path) -> tuple[str, int, int, int]:
    """Identity of a blob file for the diff_id memo; NotFound if it is missing."""
    try:
        st = os.stat(blob)
    except FileNotFoundError:
        raise NotFound(f"layer blob {blob} does not exist; pull the image again") from None
    return (os.path.abspath(blob), st.st_ino, st.st_size, st.st_mtime_ns)

