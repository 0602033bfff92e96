"""Docker schema1 manifests, read-only: digest them and convert them to config + layers.

A signed schema1 manifest (``…manifest.v1+prettyjws``) is a JWS in "pretty" form: the
signed payload is the manifest without its ``signatures`` key. Each signature's
``protected`` header says how to rebuild it (``formatLength`` bytes of the document, then the
base64url ``formatTail``), and the manifest's digest is the sha256 of that payload (distribution's
``schema1.SignedManifest.Canonical``). Signatures are not verified: schema1 trust (libtrust
keys) is dead; the digest and every layer's blobSum are what protect the content.

Conversion follows what dockerd does: ``fsLayers``/``history`` run top-first; entries
marked ``throwaway`` have no layer; the top ``v1Compatibility`` becomes the image config,
with ``rootfs.diff_ids`` filled in once the layers are downloaded and hashed.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

import attrs

from engine.errors import InvalidArgument

EMPTY_GZIP_LAYER = "sha256:a3ed95caeb02ffe68cdd9fd84406680ae93d633cb16422d00e8a7c22955b46d4"


def _b64url(data: str) -> bytes:
    return base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))


def payload(data: bytes) -> bytes:
    """The signed payload of a schema1 manifest (the bytes themselves if unsigned)."""
    doc = _load(data)
    signatures = doc.get("signatures")
    if not signatures:
        return data
    try:
        protected = json.loads(_b64url(signatures[0]["protected"]))
        length = int(protected["formatLength"])
        tail = _b64url(protected["formatTail"])
    except (KeyError, ValueError, TypeError, IndexError) as exc:
        raise InvalidArgument(
            f"signed schema1 manifest has a malformed protected header ({exc}); "
            "the registry sent a broken manifest"
        ) from None
    if not 0 < length <= len(data):
        raise InvalidArgument("signed schema1 manifest: formatLength is out of range")
    return data[:length] + tail


def manifest_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(payload(data)).hexdigest()


@attrs.frozen
class Schema1Image:
    """What a schema1 manifest says: layers (bottom first) and a config to complete."""

    name: str
    tag: str
    layers: list[str]  # blobSums of real layers, bottom first
    config: dict[str, Any]  # image config without rootfs.diff_ids

    def config_with_diff_ids(self, diff_ids: list[str]) -> bytes:
        if len(diff_ids) != len(self.layers):
            raise InvalidArgument("schema1 conversion: one diff_id per layer is needed")
        config = dict(self.config)
        config["rootfs"] = {"type": "layers", "diff_ids": list(diff_ids)}
        return json.dumps(config, separators=(",", ":"), sort_keys=True).encode()


def convert(data: bytes) -> Schema1Image:
    doc = _load(payload(data))
    fs_layers = doc.get("fsLayers") or []
    history = doc.get("history") or []
    if doc.get("schemaVersion") != 1 or not fs_layers or len(fs_layers) != len(history):
        raise InvalidArgument(
            "schema1 manifest is malformed: fsLayers and history must be non-empty and "
            "of equal length"
        )
    compat = [_v1_compat(h) for h in history]
    layers: list[str] = []
    image_history: list[dict[str, Any]] = []
    for fs_layer, v1 in zip(reversed(fs_layers), reversed(compat), strict=True):
        blob = fs_layer.get("blobSum")
        if not isinstance(blob, str) or not blob.startswith("sha256:"):
            raise InvalidArgument(f"schema1 manifest has an invalid blobSum {blob!r}")
        empty = bool(v1.get("throwaway"))
        if not empty:
            layers.append(blob)
        image_history.append(_history_entry(v1, empty))
    config = {k: v for k, v in compat[0].items() if k not in _V1_ONLY_KEYS}
    config["history"] = image_history
    return Schema1Image(
        name=str(doc.get("name", "")), tag=str(doc.get("tag", "")), layers=layers, config=config
    )


_V1_ONLY_KEYS = frozenset({"id", "parent", "Size", "parent_id", "layer_id", "throwaway"})


def _v1_compat(entry: Any) -> dict[str, Any]:
    try:
        value = json.loads(entry["v1Compatibility"])
    except (KeyError, TypeError, ValueError):
        raise InvalidArgument(
            "schema1 manifest has a history entry without v1Compatibility"
        ) from None
    if not isinstance(value, dict):
        raise InvalidArgument("schema1 v1Compatibility must be a JSON object")
    return value


def _history_entry(v1: dict[str, Any], empty: bool) -> dict[str, Any]:
    entry: dict[str, Any] = {}
    if v1.get("created"):
        entry["created"] = v1["created"]
    cmd = (v1.get("container_config") or {}).get("Cmd")
    if cmd:
        entry["created_by"] = " ".join(cmd)
    if v1.get("author"):
        entry["author"] = v1["author"]
    if v1.get("comment"):
        entry["comment"] = v1["comment"]
    if empty:
        entry["empty_layer"] = True
    return entry


def _load(data: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except ValueError:
        raise InvalidArgument("schema1 manifest is not valid JSON") from None
    if not isinstance(doc, dict):
        raise InvalidArgument("schema1 manifest must be a JSON object")
    return doc
