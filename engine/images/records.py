"""The image records: the ``Image`` type and the one state file that lists every image.

All records live in one JSON file (``images/images.json``), rewritten atomically on every
change: a name moving from one image to another is then a single atomic write, and a reader
(or a crash) never sees half of a change. Configs are not copied into the file; they are
read from the content store, where their digest (the image ID) names them.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import attrs

from engine.errors import InternalError
from engine.images.content import ContentStore
from engine.images.types import ImageConfig, parse_config
from engine.store.atomic import write_json_atomic

STATE_VERSION = 1
STATE_FILE = "images.json"


@attrs.frozen
class Image:
    """One image. ``repo_tags`` and ``repo_digests`` are full normalised references
    (``docker.io/library/busybox:latest``); ``familiar_tags`` gives docker's short form."""

    id: str  # the config digest
    repo_tags: list[str]
    repo_digests: list[str]
    manifest_digest: str
    manifest_media_type: str
    config: ImageConfig
    layer_digests: list[str]  # compressed blobs, bottom first
    diff_ids: list[str]  # uncompressed layer digests, bottom first
    layer_sizes: list[int]  # unpacked bytes per layer (blob size when unknown)
    created: str
    size: int
    architecture: str
    os: str
    index_digest: str | None = None
    added_at: float = 0.0

    @property
    def short_id(self) -> str:
        return self.id.removeprefix("sha256:")[:12]

    @property
    def dangling(self) -> bool:
        return not self.repo_tags

    def familiar_tags(self) -> list[str]:
        from engine.reference import parse_reference

        return [parse_reference(t).familiar() for t in self.repo_tags]

    def familiar_digests(self) -> list[str]:
        from engine.reference import parse_reference

        return [parse_reference(d).familiar() for d in self.repo_digests]

    def blobs(self) -> set[str]:
        """Every content-store blob this image needs."""
        found = {self.id, self.manifest_digest, *self.layer_digests}
        if self.index_digest:
            found.add(self.index_digest)
        return found


def new_image(
    *,
    config: ImageConfig,
    config_digest: str,
    manifest_digest: str,
    manifest_media_type: str,
    layer_digests: list[str],
    layer_sizes: list[int],
    index_digest: str | None,
) -> Image:
    return Image(
        id=config_digest,
        repo_tags=[],
        repo_digests=[],
        manifest_digest=manifest_digest,
        manifest_media_type=manifest_media_type,
        config=config,
        layer_digests=list(layer_digests),
        diff_ids=list(config.rootfs.diff_ids),
        layer_sizes=list(layer_sizes),
        created=config.created or "",
        size=sum(layer_sizes),
        architecture=config.architecture,
        os=config.os,
        index_digest=index_digest,
        added_at=time.time(),
    )


def to_record(image: Image) -> dict[str, Any]:
    return {
        "id": image.id,
        "repo_tags": image.repo_tags,
        "repo_digests": image.repo_digests,
        "manifest_digest": image.manifest_digest,
        "manifest_media_type": image.manifest_media_type,
        "index_digest": image.index_digest,
        "layer_digests": image.layer_digests,
        "layer_sizes": image.layer_sizes,
        "added_at": image.added_at,
    }


def from_record(record: dict[str, Any], content: ContentStore) -> Image:
    """Rebuild an image from its record and its config blob (blocking: reads the blob)."""
    config = parse_config(content.read(record["id"]))
    return Image(
        id=record["id"],
        repo_tags=list(record["repo_tags"]),
        repo_digests=list(record["repo_digests"]),
        manifest_digest=record["manifest_digest"],
        manifest_media_type=record["manifest_media_type"],
        config=config,
        layer_digests=list(record["layer_digests"]),
        diff_ids=list(config.rootfs.diff_ids),
        layer_sizes=list(record["layer_sizes"]),
        created=config.created or "",
        size=sum(record["layer_sizes"]),
        architecture=config.architecture,
        os=config.os,
        index_digest=record.get("index_digest"),
        added_at=float(record.get("added_at", 0.0)),
    )


def read_state(images_dir: Path) -> list[dict[str, Any]]:
    """The stored records (blocking). A missing file is an empty store."""
    path = images_dir / STATE_FILE
    try:
        doc = json.loads(path.read_bytes())
    except FileNotFoundError:
        return []
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        # Atomic writes make this a sign of outside tampering or disk corruption.
        raise InternalError(
            f"the image records in {path} are corrupt ({e}); move the file away and restart "
            "to start with an empty image list (blobs stay and can be pruned)"
        ) from None
    if doc.get("version") != STATE_VERSION:
        raise InternalError(
            f"{path} has version {doc.get('version')!r}, this engine reads {STATE_VERSION}"
        )
    return list(doc.get("images", {}).values())


def write_state(images_dir: Path, images: dict[str, Image]) -> None:
    """Replace the state file atomically (blocking)."""
    images_dir.mkdir(parents=True, exist_ok=True)
    doc = {"version": STATE_VERSION, "images": {i: to_record(img) for i, img in images.items()}}
    write_json_atomic(images_dir / STATE_FILE, doc)


def clean_temp_files(images_dir: Path) -> None:
    """Remove temp files of interrupted atomic writes (blocking)."""
    if not images_dir.is_dir():
        return
    for entry in images_dir.iterdir():
        if entry.name.startswith(".") and ".tmp-" in entry.name:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)  # a load's scratch directory
            else:
                entry.unlink(missing_ok=True)


def scratch_dir(images_dir: Path) -> Path:
    """A fresh scratch directory beside the records, on the content store's filesystem (so
    finished blobs are renamed into place, not copied); reconcile removes leftovers."""
    images_dir.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=".tmp-", dir=images_dir))
