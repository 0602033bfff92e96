"""The classic builder's cache: which image each step made, from which parent, by which key.

dockerd finds a step's cached image among the parent image's children, comparing their
recorded container configs. engine's images have no parent links, so the relation is kept
here: an index of the images builds made, each with its parent (``""``: a step on
``scratch``) and its step key, a digest of what decides the step's result (the history
line, the config after the step, the build args a RUN sees, for COPY/ADD the checksum of
the copied files). A step whose (parent, key) is in the index, with the image still in
the store, is a hit; the newest such image wins, as in dockerd.

The index is ``images/build-cache.json``, beside the image records, rewritten atomically
after each image a build records: a crash leaves it consistent, at worst without the last
step (whose image then shows as a dangling ``<none>`` image that ``image prune`` removes).
Entries whose image is gone (rmi, image prune) are misses and are dropped at the next
write.

The cache's images are images like any other (containers, ``rmi``), but reserved
(``ImageStore.RESERVERS``): untagged, they are left out of ``docker images`` and ``image
prune``, as dockerd hides untagged images with children. A build's last image is shown
when untagged unless a later build built on it, as dockerd shows a build's ``<none>``
result. ``docker builder prune`` (``prune``) removes them and reports the space.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import weakref
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

import attrs
import trio

from engine.errors import EngineError, NotFound
from engine.images.records import Image
from engine.images.store import RESERVERS, ImageStore
from engine.store.atomic import write_json_atomic

log = logging.getLogger("engine.build")

INDEX_FILE = "build-cache.json"
VERSION = 1
SCRATCH = ""  # the parent of a step on FROM scratch


@attrs.frozen
class Entry:
    id: str  # the step's image
    parent: str  # the image the step ran on; SCRATCH for none
    key: str  # step_key(...)
    created: float
    result: bool = False  # the last image of a build: shown when untagged and childless


def step_key(parts: dict[str, Any]) -> str:
    """A digest of what decides a step's result (JSON of ``parts``, keys sorted)."""
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


class BuildCache:
    """The index of one image store. Lookups are on the loop (no I/O); writes go to a
    worker thread under one lock."""

    def __init__(self, store: ImageStore) -> None:
        """Reads the index (blocking: the store is opened in a thread)."""
        self.store = store
        self.path = store.layout.images_dir / INDEX_FILE
        self.entries: dict[str, Entry] = _read(self.path)
        self._parents = {e.parent for e in self.entries.values()}
        self._lock = trio.Lock()
        self._building: Counter[str] = Counter()  # images a running build stands on

    @classmethod
    def of(cls, store: ImageStore) -> BuildCache:
        """The store's cache (attached when the store opened; made now otherwise)."""
        cache = _CACHES.get(store)
        if cache is None:
            cache = _CACHES[store] = cls(store)
        return cache

    # --- which images are the cache's --------------------------------------------------------

    def is_reserved(self, image: Image) -> bool:
        """Hidden from ``docker images`` and ``image prune``: an untagged step image, unless
        it is a build's result that no later step built on."""
        entry = self.entries.get(image.id)
        if entry is None or not image.dangling:
            return False
        return not entry.result or image.id in self._parents

    def cached_images(self) -> list[Image]:
        """The reserved images: what ``builder prune`` may remove."""
        found = []
        for image in self.store.list(reserved=True):
            if self.is_reserved(image):
                found.append(image)
        return found

    # --- lookups and records -----------------------------------------------------------------

    def lookup(self, parent: str, key: str) -> Image | None:
        """The newest image a step with ``key`` made on ``parent`` that is still stored."""
        candidates = sorted((e for e in self.entries.values() if e.parent == parent and e.key == key),
                            key=lambda e: e.created, reverse=True)
        for entry in candidates:
            try:
                return self.store.get(entry.id)
            except NotFound:
                continue
        return None

    async def record(self, parent: str, key: str, image_id: str) -> None:
        async with self._lock:
            entries = dict(self.entries)
            entries[image_id] = Entry(id=image_id, parent=parent, key=key, created=time.time())
            await self._save(entries)

    async def mark_result(self, image_id: str) -> None:
        entry = self.entries.get(image_id)
        if entry is None or entry.result:
            return
        async with self._lock:
            entries = dict(self.entries)
            entries[image_id] = attrs.evolve(entry, result=True)
            await self._save(entries)

    def hold(self, image_id: str) -> None:
        """A running build stands on the image: ``prune`` leaves it."""
        self._building[image_id] += 1

    def release(self, image_ids: Iterable[str]) -> None:
        self._building.subtract(image_ids)
        self._building = +self._building

    async def _save(self, entries: dict[str, Entry]) -> None:
        """Write ``entries`` (lock held), without those whose image is gone, then use them."""
        kept = {i: e for i, e in entries.items() if self._stored(i)}
        doc = {"version": VERSION, "entries": [attrs.asdict(e) for e in kept.values()]}
        with trio.CancelScope(shield=True):  # a written index is always the one in memory
            await trio.to_thread.run_sync(write_json_atomic, self.path, doc)
        self.entries = kept
        self._parents = {e.parent for e in kept.values()}

    def _stored(self, image_id: str) -> bool:
        try:
            self.store.get(image_id)
        except NotFound:
            return False
        return True

    # --- space: docker system df and docker builder prune ------------------------------------

    def protected(self, in_use: Callable[[str], bool]) -> set[str]:
        """The cache's images a plain ``builder prune`` keeps: those a running build stands
        on or a container uses, and the steps under a tagged (or shown) image or a
        container's: dockerd refuses to delete a parent image while a child needs it."""
        kept = {i for i, n in self._building.items() if n > 0}
        tops = [i.id for i in self.store.list()]  # what is not reserved: tagged or shown
        tops += [i for i in self.entries if in_use(i)]
        for image_id in tops:
            current: str | None = image_id
            while current and current not in kept:
                kept.add(current)
                entry = self.entries.get(current)
                current = entry.parent if entry is not None else None
        return kept

    def usage_rows(self, in_use: Callable[[str], bool]) -> list[dict[str, Any]]:
        """docker's ``BuildCache`` rows of ``system df``: one per reserved image, sized by
        the layers that only the cache holds (each counted once, on the image that
        introduced it)."""
        cached = self.cached_images()
        cached_ids = {i.id for i in cached}
        protected = self.protected(in_use)
        elsewhere = {d for i in self.store.list(reserved=True) if i.id not in cached_ids for d in i.diff_ids}
        counted: set[str] = set()
        rows = []
        for image in sorted(cached, key=lambda i: len(i.diff_ids)):
            size = 0
            for diff_id, layer_size in zip(image.diff_ids, image.layer_sizes, strict=False):
                if diff_id not in elsewhere and diff_id not in counted:
                    counted.add(diff_id)
                    size += layer_size
            entry = self.entries[image.id]
            rows.append({
                "ID": image.id.removeprefix("sha256:")[:25], "Parent": entry.parent, "Parents": [entry.parent],
                "Type": "regular", "Description": _description(image), "InUse": image.id in protected, "Shared": False, "Size": size,
                "CreatedAt": _iso(entry.created), "LastUsedAt": None, "UsageCount": 0,
            })
        return rows

    async def prune(self, in_use: Callable[[str], bool], *, everything: bool = False,
                    until: float | None = None) -> dict[str, Any]:
        """Remove the cache's images but the ``protected`` ones (``everything``: but those a
        container or a running build uses), made before ``until`` when given; docker's
        ``{"CachesDeleted": [...], "SpaceReclaimed": n}``, the space being that of the
        layers no image holds any more."""
        if everything:
            kept = {i for i in self.entries if in_use(i) or self._building.get(i)}
        else:
            kept = self.protected(in_use)
        doomed = [i for i in self.cached_images()
                  if i.id not in kept and (until is None or self.entries[i.id].created < until)]
        before = self._layer_sizes()
        deleted: list[str] = []
        for image in doomed:
            try:
                await self.store.remove(image.id, force=False, in_use=in_use)
            except EngineError as e:  # used meanwhile, or already gone
                log.info("builder prune: %s stays: %s", image.short_id, e)
                continue
            deleted.append(image.id)
        after = self._layer_sizes()
        async with self._lock:
            await self._save(dict(self.entries))
        return {"CachesDeleted": deleted,
                "SpaceReclaimed": sum(size for d, size in before.items() if d not in after)}

    def _layer_sizes(self) -> dict[str, int]:
        sizes: dict[str, int] = {}
        for image in self.store.list(reserved=True):
            sizes.update(zip(image.diff_ids, image.layer_sizes, strict=False))
        return sizes


def _description(image: Image) -> str:
    history = image.config.history or []
    return history[-1].created_by or "" if history else ""


def _iso(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def _read(path: Any) -> dict[str, Entry]:
    """The stored index (blocking). A missing or unreadable one is an empty cache: the
    cache is an optimisation, never a reason for a build or the daemon to fail."""
    try:
        doc = json.loads(path.read_bytes())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        log.warning("build cache index %s is unreadable (%s): starting with an empty cache", path, e)
        return {}
    if not isinstance(doc, dict) or doc.get("version") != VERSION:
        log.warning("build cache index %s has an unknown version: starting with an empty cache", path)
        return {}
    entries: dict[str, Entry] = {}
    for item in doc.get("entries") or []:
        try:
            entry = Entry(id=str(item["id"]), parent=str(item["parent"]), key=str(item["key"]),
                          created=float(item["created"]), result=bool(item.get("result", False)))
        except (KeyError, TypeError, ValueError):
            continue
        entries[entry.id] = entry
    return entries


_CACHES: weakref.WeakKeyDictionary[ImageStore, BuildCache] = weakref.WeakKeyDictionary()


def _attach(store: ImageStore) -> Callable[[Image], bool]:
    cache = BuildCache.of(store)
    return cache.is_reserved


RESERVERS.append(_attach)
