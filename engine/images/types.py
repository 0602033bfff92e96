"""OCI and Docker schema2 manifests, indexes and image configs as attrs types.

Parsing tolerates unknown JSON keys. Every parsed object keeps the bytes it came from in
``raw``: digests are computed over those bytes, so nothing here is ever re-serialised to be
stored or pushed (re-serialising changes key order and whitespace, and so the digest).
"""

from __future__ import annotations

import json
import platform
from typing import Any

import attrs

from engine.convert import ValidationError, describe_error, documents, field_meta
from engine.errors import InvalidArgument

# --- media types ---------------------------------------------------------------------------

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
OCI_LAYER_NONDIST = "application/vnd.oci.image.layer.nondistributable.v1.tar"
OCI_LAYER_NONDIST_GZIP = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
OCI_LAYER_NONDIST_ZSTD = "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"  # uncompressed (docker save)
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_LAYER_FOREIGN = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
DOCKER_SCHEMA1_MANIFEST = "application/vnd.docker.distribution.manifest.v1+json"
DOCKER_SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"

MANIFEST_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})
SCHEMA1_TYPES = frozenset({DOCKER_SCHEMA1_MANIFEST, DOCKER_SCHEMA1_SIGNED})
CONFIG_TYPES = frozenset({OCI_CONFIG, DOCKER_CONFIG})
LAYER_TYPES = frozenset(
    {
        OCI_LAYER,
        OCI_LAYER_GZIP,
        OCI_LAYER_ZSTD,
        OCI_LAYER_NONDIST,
        OCI_LAYER_NONDIST_GZIP,
        OCI_LAYER_NONDIST_ZSTD,
        DOCKER_LAYER,
        DOCKER_LAYER_GZIP,
        DOCKER_LAYER_FOREIGN,
    }
)
# Accept headers a puller sends, most preferred first.
ACCEPT_MANIFESTS = (OCI_INDEX, OCI_MANIFEST, DOCKER_MANIFEST_LIST, DOCKER_MANIFEST)

ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"
ANNOTATION_CONTAINERD_NAME = "io.containerd.image.name"


# --- descriptors ---------------------------------------------------------------------------


@attrs.frozen
class Platform:
    architecture: str = ""
    os: str = ""
    os_version: str | None = attrs.field(default=None, metadata=field_meta(name="os.version"))
    os_features: list[str] | None = attrs.field(default=None, metadata=field_meta(name="os.features"))
    variant: str | None = None
    features: list[str] | None = None


@attrs.frozen
class Descriptor:
    media_type: str = attrs.field(metadata=field_meta(name="mediaType"))
    digest: str
    size: int
    urls: list[str] | None = None
    annotations: dict[str, str] | None = None
    platform: Platform | None = None
    artifact_type: str | None = attrs.field(default=None, metadata=field_meta(name="artifactType"))


# --- manifests and indexes -----------------------------------------------------------------


@attrs.frozen
class Manifest:
    """An OCI image manifest or a Docker schema2 manifest (same shape)."""

    schema_version: int = attrs.field(metadata=field_meta(name="schemaVersion"))
    config: Descriptor
    layers: list[Descriptor] = attrs.field(factory=list)
    media_type: str = attrs.field(default=OCI_MANIFEST, metadata=field_meta(name="mediaType"))
    annotations: dict[str, str] | None = None
    subject: Descriptor | None = None
    artifact_type: str | None = attrs.field(default=None, metadata=field_meta(name="artifactType"))
    raw: bytes = attrs.field(default=b"", repr=False, metadata=field_meta(omit=True))


@attrs.frozen
class Index:
    """An OCI image index or a Docker manifest list (same shape)."""

    schema_version: int = attrs.field(metadata=field_meta(name="schemaVersion"))
    manifests: list[Descriptor] = attrs.field(factory=list)
    media_type: str = attrs.field(default=OCI_INDEX, metadata=field_meta(name="mediaType"))
    annotations: dict[str, str] | None = None
    subject: Descriptor | None = None
    artifact_type: str | None = attrs.field(default=None, metadata=field_meta(name="artifactType"))
    raw: bytes = attrs.field(default=b"", repr=False, metadata=field_meta(omit=True))


# --- image config --------------------------------------------------------------------------


@attrs.frozen
class ContainerConfig:
    """The ``config`` object of an image config: defaults for containers run from it."""

    user: str = attrs.field(default="", metadata=field_meta(name="User"))
    env: list[str] | None = attrs.field(default=None, metadata=field_meta(name="Env"))
    entrypoint: list[str] | None = attrs.field(
        default=None, metadata=field_meta(name="Entrypoint", string_as_list=True))
    cmd: list[str] | None = attrs.field(default=None, metadata=field_meta(name="Cmd", string_as_list=True))
    working_dir: str = attrs.field(default="", metadata=field_meta(name="WorkingDir"))
    exposed_ports: dict[str, dict[str, Any]] | None = attrs.field(
        default=None, metadata=field_meta(name="ExposedPorts")
    )
    volumes: dict[str, dict[str, Any]] | None = attrs.field(default=None, metadata=field_meta(name="Volumes"))
    labels: dict[str, str] | None = attrs.field(default=None, metadata=field_meta(name="Labels"))
    stop_signal: str = attrs.field(default="", metadata=field_meta(name="StopSignal"))


@attrs.frozen
class RootFS:
    # the spec requires both keys even when they hold their defaults
    type: str = attrs.field(default="layers", metadata=field_meta(keep_default=True))
    diff_ids: list[str] = attrs.field(factory=list, metadata=field_meta(keep_default=True))


@attrs.frozen
class History:
    created: str | None = None
    created_by: str | None = None
    author: str | None = None
    comment: str | None = None
    empty_layer: bool = False


@attrs.frozen
class ImageConfig:
    architecture: str = ""
    os: str = ""
    variant: str | None = None
    os_version: str | None = attrs.field(default=None, metadata=field_meta(name="os.version"))
    created: str | None = None
    author: str | None = None
    config: ContainerConfig = attrs.field(factory=ContainerConfig)
    rootfs: RootFS = attrs.field(factory=RootFS)
    history: list[History] = attrs.field(factory=list)
    raw: bytes = attrs.field(default=b"", repr=False, metadata=field_meta(omit=True))


def structure(data: Any, cls: type[Any]) -> Any:
    """Structure JSON data into one of these types; ``InvalidArgument`` on a bad shape."""
    try:
        return documents.structure(data, cls)
    except (ValidationError, TypeError, ValueError, KeyError) as e:
        raise InvalidArgument(f"malformed {cls.__name__}: {describe_error(e)}") from None


def unstructure(obj: Any) -> Any:
    """JSON-ready dict (for building new documents, e.g. an imported image's config)."""
    return documents.unstructure(obj)


def to_json_bytes(obj: Any) -> bytes:
    """Canonical-ish bytes for a *new* document; never use this to re-store parsed ones."""
    return json.dumps(unstructure(obj), separators=(",", ":"), sort_keys=True).encode()


# --- parsing -------------------------------------------------------------------------------

# Registries sometimes send a generic Content-Type: then the document itself decides.
_GENERIC_TYPES = frozenset({"", "application/json", "text/plain", "application/octet-stream"})


def _load_json(data: bytes, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InvalidArgument(f"{what} is not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise InvalidArgument(f"{what} must be a JSON object, got {type(doc).__name__}")
    return doc


def detect_media_type(doc: dict[str, Any], header: str | None) -> str:
    """The manifest's media type: the header's, else the document's ``mediaType``, else
    guessed from its shape (OCI allows omitting ``mediaType``)."""
    declared = doc.get("mediaType")
    header = (header or "").split(";")[0].strip()
    if header and header not in _GENERIC_TYPES:
        if isinstance(declared, str) and declared and declared != header:
            raise InvalidArgument(
                f"manifest declares mediaType {declared!r} but was served as {header!r}; "
                "the registry or the archive is inconsistent"
            )
        return header
    if isinstance(declared, str) and declared:
        return declared
    if doc.get("schemaVersion") == 1:
        return DOCKER_SCHEMA1_MANIFEST
    if "manifests" in doc:
        return OCI_INDEX
    if "config" in doc and "layers" in doc:
        return OCI_MANIFEST
    raise InvalidArgument(
        "cannot tell what kind of manifest this is: no mediaType and neither 'manifests' "
        "nor 'config'+'layers'"
    )


def parse_manifest(data: bytes, media_type: str | None = None) -> Manifest | Index:
    """Parse an image manifest or index (OCI or Docker schema2). Schema1 is refused here:
    the registry client converts it."""
    doc = _load_json(data, "manifest")
    kind = detect_media_type(doc, media_type)
    if kind in SCHEMA1_TYPES:
        raise InvalidArgument(
            "Docker schema1 manifests are not image manifests this store can record; "
            "the registry client must convert them first"
        )
    if doc.get("schemaVersion") != 2:
        raise InvalidArgument(
            f"unsupported manifest schemaVersion {doc.get('schemaVersion')!r}: expected 2"
        )
    doc = {**doc, "mediaType": kind}
    if kind in MANIFEST_TYPES:
        manifest: Manifest = structure(doc, Manifest)
        return attrs.evolve(manifest, raw=bytes(data))
    if kind in INDEX_TYPES:
        index: Index = structure(doc, Index)
        return attrs.evolve(index, raw=bytes(data))
    raise InvalidArgument(f"unsupported manifest media type {kind!r}")


def parse_config(data: bytes) -> ImageConfig:
    """Parse an image config (OCI or Docker; the same JSON)."""
    doc = _load_json(data, "image config")
    config: ImageConfig = structure(doc, ImageConfig)
    for diff_id in config.rootfs.diff_ids:
        if not isinstance(diff_id, str) or not diff_id.startswith("sha256:"):
            raise InvalidArgument(f"image config has an invalid rootfs diff_id {diff_id!r}")
    return attrs.evolve(config, raw=bytes(data))


def host_architecture() -> str:
    """This host's architecture in OCI/Go terms (``amd64``, ``arm64``...)."""
    machine = platform.machine()
    return {
        "x86_64": "amd64",
        "aarch64": "arm64",
        "armv7l": "arm",
        "i686": "386",
        "ppc64le": "ppc64le",
        "s390x": "s390x",
    }.get(machine, machine)


def platform_string(os_name: str, arch: str, variant: str | None = None) -> str:
    return "/".join(p for p in (os_name, arch, variant) if p)
