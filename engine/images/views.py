"""Docker-shaped views of an image: ``inspect`` and ``history`` output."""

from __future__ import annotations

import json
from typing import Any

from engine.images.records import Image
from engine.images.types import unstructure


def inspect_view(image: Image) -> dict[str, Any]:
    """What ``docker image inspect`` prints, for the fields this engine knows."""
    config = image.config
    container_config = unstructure(config.config)
    healthcheck = image_healthcheck(config.raw)
    if healthcheck is not None and isinstance(container_config, dict):
        container_config["Healthcheck"] = healthcheck
    if isinstance(container_config, dict):
        container_config.update(docker_list_fields(config.raw))
    return {
        "Id": image.id,
        "RepoTags": image.familiar_tags(),
        "RepoDigests": image.familiar_digests(),
        "Created": image.created,
        "Author": config.author or "",
        "Size": image.size,
        "Architecture": image.architecture,
        "Variant": config.variant or "",
        "Os": image.os,
        "Config": container_config,
        "RootFS": {"Type": config.rootfs.type, "Layers": list(image.diff_ids)},
        "Manifest": {
            "Digest": image.manifest_digest,
            "MediaType": image.manifest_media_type,
            "Index": image.index_digest,
            "Layers": list(image.layer_digests),
        },
        "Metadata": {"LastTagTime": image.added_at},
    }


def image_healthcheck(raw: bytes) -> dict[str, Any] | None:
    """An image config document's ``config.Healthcheck`` (docker's extension, which the
    parsed OCI config drops)."""
    try:
        value = (json.loads(raw or b"{}").get("config") or {}).get("Healthcheck")
    except (ValueError, AttributeError):
        return None
    return value if isinstance(value, dict) else None


def docker_list_fields(raw: bytes) -> dict[str, list[str]]:
    """An image config's ``config.OnBuild`` and ``config.Shell`` (docker's extensions, which
    a build records and the parsed OCI config drops)."""
    try:
        config = json.loads(raw or b"{}").get("config") or {}
    except (ValueError, AttributeError):
        return {}
    out = {}
    for key in ("OnBuild", "Shell"):
        value = config.get(key) if isinstance(config, dict) else None
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            out[key] = value
    return out


def history_view(image: Image) -> list[dict[str, Any]]:
    """``docker history``: newest first; the top entry carries the ID and the tags."""
    history = image.config.history
    if not history:
        # Images without history (docker import of old tools): one entry per layer.
        rows = [
            {"Created": image.created, "CreatedBy": "", "Comment": "", "Size": size}
            for size in image.layer_sizes
        ]
    else:
        sizes = iter(image.layer_sizes)
        rows = [
            {
                "Created": h.created or "",
                "CreatedBy": h.created_by or "",
                "Comment": h.comment or "",
                "Size": 0 if h.empty_layer else next(sizes, 0),
            }
            for h in history
        ]
    rows.reverse()
    for i, row in enumerate(rows):
        row["Id"] = image.id if i == 0 else "<missing>"
        row["Tags"] = image.familiar_tags() if i == 0 else []
    return rows
