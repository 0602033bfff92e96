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
import cattrs
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override

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


def _key(name: str) -> dict[str, str]:
    """Field metadata: the JSON key when it differs from the Python attribute name."""
    return {"json": name}


# --- descriptors ---------------------------------------------------------------------------


@attrs.frozen
class Platform:
    architecture: str = ""
    os: str = ""
    os_version: str | None = attrs.field(default=None, metadata=_key("os.version"))
    os_features: list[str] | None = attrs.field(default=None, metadata=_key("os.features"))
    variant: str | None = None
    features: list[str] | None = None


@attrs.frozen
class Descriptor:
    media_type: str = attrs.field(metadata=_key("mediaType"))
    digest: str
    size: int
    urls: list[str] | None = None
    annotations: dict[str, str] | None = None
    platform: Platform | None = None
    artifact_type: str | None = attrs.field(default=None, metadata=_key("artifactType"))


# --- manifests and indexes -----------------------------------------------------------------


@attrs.frozen
class Manifest:
    """An OCI image manifest or a Docker schema2 manifest (same shape)."""

    schema_version: int = attrs.field(metadata=_key("schemaVersion"))
    config: Descriptor
    layers: list[Descriptor] = attrs.field(factory=list)
    media_type: str = attrs.field(default=OCI_MANIFEST, metadata=_key("mediaType"))
    annotations: dict[str, str] | None = None
    subject: Descriptor | None = None
    artifact_type: str | None = attrs.field(default=None, metadata=_key("artifactType"))
    raw: bytes = attrs.field(default=b"", repr=False, metadata={"omit": True})


@attrs.frozen
class Index:
    """An OCI image index or a Docker manifest list (same shape)."""

    schema_version: int = attrs.field(metadata=_key("schemaVersion"))
    manifests: list[Descriptor] = attrs.field(factory=list)
    media_type: str = attrs.field(default=OCI_INDEX, metadata=_key("mediaType"))
    annotations: dict[str, str] | None = None
    subject: Descriptor | None = None
    artifact_type: str | None = attrs.field(default=None, metadata=_key("artifactType"))
    raw: bytes = attrs.field(default=b"", repr=False, metadata={"omit": True})


# --- image config --------------------------------------------------------------------------


@attrs.frozen
class ContainerConfig:
    """The ``config`` object of an image config: defaults for containers run from it."""

    user: str = attrs.field(default="", metadata=_key("User"))
    env: list[str] | None = attrs.field(default=None, metadata=_key("Env"))
    entrypoint: list[str] | None = attrs.field(default=None, metadata=_key("Entrypoint"))
    cmd: list[str] | None = attrs.field(default=None, metadata=_key("Cmd"))
    working_dir: str = attrs.field(default="", metadata=_key("WorkingDir"))
    exposed_ports: dict[str, dict[str, Any]] | None = attrs.field(
        default=None, metadata=_key("ExposedPorts")
    )
    volumes: dict[str, dict[str, Any]] | None = attrs.field(default=None, metadata=_key("Volumes"))
    labels: dict[str, str] | None = attrs.field(default=None, metadata=_key("Labels"))
    stop_signal: str = attrs.field(default="", metadata=_key("StopSignal"))


@attrs.frozen
class RootFS:
    type: str = "layers"
    diff_ids: list[str] = attrs.field(factory=list)


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
    os_version: str | None = attrs.field(default=None, metadata=_key("os.version"))
    created: str | None = None
    author: str | None = None
    config: ContainerConfig = attrs.field(factory=ContainerConfig)
    rootfs: RootFS = attrs.field(factory=RootFS)
    history: list[History] = attrs.field(factory=list)
    raw: bytes = attrs.field(default=b"", repr=False, metadata={"omit": True})


# --- the converter -------------------------------------------------------------------------

_converter = cattrs.Converter(omit_if_default=True)


# cattrs coerces by default (str(12), list("abc")): a manifest with the wrong JSON types is
# malformed and must be refused, not silently turned into something else.
def _strict_str(value: Any, _: type) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value


def _strict_int(value: Any, _: type) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"expected an integer, got {type(value).__name__}")
    return value


def _strict_bool(value: Any, _: type) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"expected true or false, got {type(value).__name__}")
    return value


def _strict_str_list(value: Any, _: type) -> list[str]:
    if not isinstance(value, list):
        raise TypeError(f"expected a list of strings, got {type(value).__name__}")
    return [_strict_str(v, str) for v in value]


_converter.register_structure_hook(str, _strict_str)
_converter.register_structure_hook(int, _strict_int)
_converter.register_structure_hook(bool, _strict_bool)
_converter.register_structure_hook_func(lambda t: t == list[str], _strict_str_list)

# JSON null is common in docker configs ("Env": null): treat it as absent for these fields.
_NULL_TOLERANT = (ContainerConfig, RootFS, History, ImageConfig)

# Docker reads Entrypoint and Cmd as a "string slice": a plain string is a one-element list
# (docker's strslice.StrSlice), and images built by other tools do carry that form.
_STRING_OR_LIST: dict[type, tuple[str, ...]] = {ContainerConfig: ("Entrypoint", "Cmd")}


# The spec requires these keys even when they hold the default value.
_KEEP_DEFAULTS = (RootFS,)


def _register(cls: type) -> None:
    overrides: dict[str, Any] = {}
    for field in attrs.fields(cls):
        if field.metadata.get("omit"):
            overrides[field.name] = override(omit=True)
        elif "json" in field.metadata:
            overrides[field.name] = override(rename=field.metadata["json"])
    structure: Any = make_dict_structure_fn(cls, _converter, **overrides)
    if cls in _NULL_TOLERANT:
        null_fields = {f.name: f for f in attrs.fields(cls)}
        keys = {
            f.metadata.get("json", f.name): f
            for f in null_fields.values()
            if f.default is not attrs.NOTHING
        }

        one_or_many = _STRING_OR_LIST.get(cls, ())

        def structure_nulls(data: Any, t: type, _inner: Any = structure) -> Any:
            if isinstance(data, dict):
                data = {
                    k: [v] if k in one_or_many and isinstance(v, str) else v
                    for k, v in data.items()
                    if not (v is None and k in keys)
                }
            return _inner(data, t)

        _converter.register_structure_hook(cls, structure_nulls)
    else:
        _converter.register_structure_hook(cls, structure)
    _converter.register_unstructure_hook(
        cls,
        make_dict_unstructure_fn(
            cls, _converter, _cattrs_omit_if_default=cls not in _KEEP_DEFAULTS, **overrides
        ),
    )


for _cls in (Platform, Descriptor, Manifest, Index, ContainerConfig, RootFS, History, ImageConfig):
    _register(_cls)


def structure(data: Any, cls: type[Any]) -> Any:
    """Structure JSON data into one of these types; ``InvalidArgument`` on a bad shape."""
    try:
        return _converter.structure(data, cls)
    except (cattrs.BaseValidationError, TypeError, ValueError, KeyError) as e:
        detail = (
            "; ".join(cattrs.transform_error(e))
            if isinstance(e, cattrs.BaseValidationError)
            else str(e)
        )
        raise InvalidArgument(f"malformed {cls.__name__}: {detail}") from None


def unstructure(obj: Any) -> Any:
    """JSON-ready dict (for building new documents, e.g. an imported image's config)."""
    return _converter.unstructure(obj)


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
