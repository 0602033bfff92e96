"""``system check [--repair]``: verify what the daemon keeps on disk and, when asked, mend
what is broken without touching what is sound.

Checked: every blob against its digest; every image's record against its config (the
layers' diff_ids) and its blobs; every layer an image needs is unpacked, under the diff_id
it claims; container directories and writable layers that no container owns; volume
records and their data.

Repairs: a missing layer is unpacked again from its (sound) blob; an image with a damaged
or missing blob that no container uses is removed (a pull fetches it again); a container
root or writable layer no container owns is removed; an unreadable volume record is removed
with its data; a volume whose data directory is gone gets an empty one.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import trio

from engine.errors import EngineError, NotFound
from engine.images.content import file_digest
from engine.store.rmtree import remove_tree

if TYPE_CHECKING:
    from engine.images.records import Image
    from engine.supervisor.app import App

log = logging.getLogger("engine.check")

YOUNG = 30.0  # seconds: a container directory this new may be a create in progress


@attrs.define
class Problem:
    kind: str  # blob | image | layer | container | volume
    object: str
    problem: str
    repair: str = ""  # what --repair does (or did)
    repaired: bool = False

    def view(self) -> dict[str, Any]:
        return {"Kind": self.kind, "Object": self.object, "Problem": self.problem,
                "Repair": self.repair, "Repaired": self.repaired}


class Checker:
    def __init__(self, app: App, repair: bool) -> None:
        self.app = app
        self.repair = repair
        self.problems: list[Problem] = []
        self.checked: dict[str, int] = {}

    def found(self, problem: Problem) -> Problem:
        self.problems.append(problem)
        log.warning("system check: %s %s: %s", problem.kind, problem.object, problem.problem)
        return problem

    async def run(self) -> dict[str, Any]:
        if self.app.services.images is not None:
            await self.check_images()
        await self.check_containers()
        await self.check_volumes()
        return {
            "Problems": [p.view() for p in self.problems],
            "Checked": self.checked,
            "Clean": not self.problems,
            "Repaired": self.repair and all(p.repaired for p in self.problems),
        }

    # --- images: blobs, records, layers -----------------------------------------------------

    async def check_images(self) -> None:
        store = self.app.services.require_images()
        content = store.content
        driver = self.app.storage()

        def damaged_blobs() -> tuple[int, dict[str, str]]:
            bad: dict[str, str] = {}
            count = 0
            for digest in list(content.digests()):
                count += 1
                try:
                    actual = file_digest(content.path(digest))
                except FileNotFoundError:
                    continue
                if actual != digest:
                    bad[digest] = actual
            return count, bad

        self.checked["blobs"], bad = await trio.to_thread.run_sync(damaged_blobs)
        images = store.list(reserved=True)  # the build cache's images too
        self.checked["images"] = len(images)
        broken_images: dict[str, list[str]] = {}
        for digest, actual in bad.items():
            users = [i for i in images if digest in i.blobs()]
            names = ", ".join(_name(i) for i in users) or "no image"
            self.found(Problem("blob", digest, f"content does not match its digest (it hashes to "
                                               f"{actual}); used by {names}",
                               "delete the blob; remove the images that need it (pull them again)"))
            for image in users:
                broken_images.setdefault(image.id, []).append(f"blob {digest[:19]} is damaged")
        for image in images:
            for digest in sorted(image.blobs()):
                if digest not in bad and not await trio.to_thread.run_sync(content.has, digest):
                    broken_images.setdefault(image.id, []).append(f"blob {digest[:19]} is missing")
            config_ids = list(image.config.rootfs.diff_ids or [])
            if config_ids != list(image.diff_ids):
                broken_images.setdefault(image.id, []).append(
                    "its record's layer diff_ids differ from its config's")
        layers = sorted({d for image in images for d in image.diff_ids})
        self.checked["layers"] = len(layers)
        for diff_id in layers:
            await self.check_layer(diff_id, images, bad, broken_images, driver)
        for image_id, reasons in broken_images.items():
            image = next(i for i in images if i.id == image_id)
            problem = self.found(Problem("image", f"{_name(image)} ({image_id[:19]})", "; ".join(reasons),
                                         "remove the image (pull it again)"))
            if self.repair:
                await self.remove_image(image, problem)
        if self.repair:
            for digest in bad:
                await trio.to_thread.run_sync(content.delete, digest)
            for problem in self.problems:
                if problem.kind == "blob" and not await trio.to_thread.run_sync(content.has, problem.object):
                    problem.repaired = True

    async def check_layer(self, diff_id: str, images: list[Image], bad: dict[str, str],
                          broken_images: dict[str, list[str]], driver: Any) -> None:
        path = driver.layer_path(diff_id)
        users = [i for i in images if diff_id in i.diff_ids]
        if await driver.has_layer(diff_id) and await trio.to_thread.run_sync(lambda: (path / "diff").is_dir()):
            try:
                info = await driver.layer_info(diff_id)
            except (EngineError, OSError, KeyError, ValueError) as e:
                self.found(Problem("layer", diff_id, f"its metadata is unreadable: {e}"))
                return
            if info.diff_id != diff_id:
                for image in users:
                    broken_images.setdefault(image.id, []).append(
                        f"layer {diff_id[:19]} holds {info.diff_id[:19]}")
            return
        blob = next((blob for i in users for blob, d in zip(i.layer_digests, i.diff_ids, strict=False)
                     if d == diff_id), None)
        sound = blob is not None and blob not in bad and self.app.services.require_images().content.has(blob)
        problem = self.found(Problem(
            "layer", diff_id, f"its directory {path} is missing (needed by "
            f"{', '.join(_name(i) for i in users)})",
            "unpack it again from its blob" if sound else "remove the images that need it"))
        if not sound:
            for image in users:
                broken_images.setdefault(image.id, []).append(f"layer {diff_id[:19]} is missing")
            return
        if self.repair:
            assert blob is not None
            try:
                await self.discard_layer_leftovers(driver, diff_id)
                info = await driver.unpack_layer(self.app.services.require_images().content.path(blob),
                                                 expected_diff_id=diff_id)
                problem.repaired = info.diff_id == diff_id
            except EngineError as e:
                problem.repair += f" (failed: {e})"

    async def discard_layer_leftovers(self, driver: Any, diff_id: str) -> None:
        """A layer directory without its metadata (half there) goes before the unpack."""
        path = driver.layer_path(diff_id)
        if await trio.to_thread.run_sync(path.exists):
            try:
                await driver.remove_layer(diff_id)
            except (EngineError, OSError):
                await trio.to_thread.run_sync(remove_tree, path)

    async def remove_image(self, image: Image, problem: Problem) -> None:
        supervisor = self.app.services.require_containers()
        if supervisor.image_in_use(image.id):
            problem.repair = "none: a container uses it (remove the container, then check again)"
            return
        try:
            await self.app.services.require_images().remove(image.id, force=True)
            problem.repaired = True
            self.app.events.emit("image", "delete", image.id, reason="system check")
        except NotFound:
            problem.repaired = True
        except EngineError as e:
            problem.repair += f" (failed: {e})"

    # --- containers ----------------------------------------------------------------------------

    async def check_containers(self) -> None:
        supervisor = self.app.services.require_containers()
        known = {a.id for a in supervisor.all()}
        containers_dir = self.app.layout.containers_dir

        def dangling_roots() -> tuple[int, list[tuple[str, str]]]:
            found = []
            now = time.time()
            entries = list(os.scandir(containers_dir)) if containers_dir.exists() else []
            for entry in entries:
                if entry.name in known or not entry.is_dir(follow_symlinks=False):
                    continue
                has_config = (Path(entry.path) / "config.json").exists()
                if has_config and now - entry.stat(follow_symlinks=False).st_mtime < YOUNG:
                    continue  # maybe a create in progress
                why = "no container owns it" if has_config else "no container owns it (it has no config.json)"
                found.append((entry.name, why))
            return len(entries), found

        self.checked["container_roots"], dangling = await trio.to_thread.run_sync(dangling_roots)
        for name, why in dangling:
            problem = self.found(Problem("container", str(containers_dir / name),
                                         f"a container root that {why}", "remove the directory"))
            if self.repair:
                try:
                    await trio.to_thread.run_sync(remove_tree, containers_dir / name)
                    problem.repaired = True
                except OSError as e:
                    problem.repair += f" (failed: {e.strerror or e})"
        driver = self.app.installed_storage()
        if driver is None:
            return
        layers = await trio.to_thread.run_sync(driver.container_ids)
        self.checked["container_layers"] = len(layers)
        for cid in layers:
            if cid in known:
                continue
            problem = self.found(Problem("container", cid, "a writable layer that no container owns",
                                         "unmount and remove it"))
            if self.repair:
                try:
                    await driver.remove_container(cid)
                    problem.repaired = True
                except EngineError as e:
                    problem.repair += f" (failed: {e})"

    # --- volumes -----------------------------------------------------------------------------------

    async def check_volumes(self) -> None:
        service = self.app.services.volumes
        if service is None:
            return
        store = service.store
        await trio.to_thread.run_sync(store.rescan)
        self.checked["volumes"] = len(store.list()) + len(store.broken)
        for name, why in sorted(store.broken.items()):
            problem = self.found(Problem("volume", name, why, "remove the volume and its data"))
            if self.repair:
                try:
                    await store.forget_broken(name)
                    problem.repaired = True
                except OSError as e:
                    problem.repair += f" (failed: {e.strerror or e})"
        for record in store.list():
            if record.driver != "local":
                continue
            data = store.path(record.name) / "_data"
            if await trio.to_thread.run_sync(data.is_dir):
                continue
            problem = self.found(Problem("volume", record.name, f"its data directory {data} is missing",
                                         "make an empty one (the data is lost)"))
            if self.repair:
                try:
                    await store.driver(record.driver).create(record.name, record.options)
                    problem.repaired = True
                except EngineError as e:
                    problem.repair += f" (failed: {e})"


def _name(image: Image) -> str:
    tags = image.familiar_tags()
    return tags[0] if tags else image.id[:19]


async def system_check(app: App, *, repair: bool) -> dict[str, Any]:
    return await Checker(app, repair).run()
