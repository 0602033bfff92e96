"""Manifest, index and config parsing: media type detection, unknown keys, raw bytes kept."""

from __future__ import annotations

import json

import pytest

from engine.errors import InvalidArgument
from engine.images import types as t

A, B, C = ("sha256:" + ch * 64 for ch in "abc")


def _manifest(media_type: str | None = t.OCI_MANIFEST, **extra: object) -> bytes:
    doc: dict[str, object] = {
        "schemaVersion": 2,
        "config": {"mediaType": t.OCI_CONFIG, "digest": A, "size": 10},
        "layers": [{"mediaType": t.OCI_LAYER_GZIP, "digest": B, "size": 20, "x-future": 1}],
        **extra,
    }
    if media_type:
        doc["mediaType"] = media_type
    # Unusual spacing: a re-serialised document would not keep it.
    return json.dumps(doc, indent=7).encode()


def test_oci_manifest_keeps_raw_bytes_and_tolerates_unknown_keys() -> None:
    data = _manifest(annotations={"k": "v"}, somethingNew={"a": 1})
    m = t.parse_manifest(data, t.OCI_MANIFEST)
    assert isinstance(m, t.Manifest)
    assert m.raw == data
    assert m.media_type == t.OCI_MANIFEST
    assert m.config.digest == A and m.config.size == 10
    assert [layer.digest for layer in m.layers] == [B]
    assert m.annotations == {"k": "v"}


@pytest.mark.parametrize(
    ("doc_type", "header", "expected", "kind"),
    [
        (t.DOCKER_MANIFEST, None, t.DOCKER_MANIFEST, t.Manifest),
        (t.OCI_MANIFEST, "application/json", t.OCI_MANIFEST, t.Manifest),
        (None, None, t.OCI_MANIFEST, t.Manifest),
        (None, t.DOCKER_MANIFEST, t.DOCKER_MANIFEST, t.Manifest),
    ],
)
def test_manifest_type_detection(
    doc_type: str | None, header: str | None, expected: str, kind: type
) -> None:
    m = t.parse_manifest(_manifest(doc_type), header)
    assert isinstance(m, kind)
    assert m.media_type == expected


def test_index_and_manifest_list() -> None:
    entry = {
        "mediaType": t.DOCKER_MANIFEST,
        "digest": A,
        "size": 5,
        "platform": {"architecture": "arm64", "os": "linux", "variant": "v8", "os.version": "x"},
    }
    for media_type in (t.OCI_INDEX, t.DOCKER_MANIFEST_LIST, None):
        doc: dict[str, object] = {"schemaVersion": 2, "manifests": [entry]}
        if media_type:
            doc["mediaType"] = media_type
        index = t.parse_manifest(json.dumps(doc).encode(), None)
        assert isinstance(index, t.Index)
        assert index.media_type == (media_type or t.OCI_INDEX)
        platform = index.manifests[0].platform
        assert platform is not None
        assert (platform.os, platform.architecture, platform.variant, platform.os_version) == (
            "linux",
            "arm64",
            "v8",
            "x",
        )


@pytest.mark.parametrize(
    ("data", "header", "why"),
    [
        (b"not json", None, "not valid JSON"),
        (b"[]", None, "must be a JSON object"),
        (b'{"schemaVersion": 2}', None, "cannot tell what kind"),
        (_manifest(t.OCI_MANIFEST), t.DOCKER_MANIFEST, "inconsistent"),
        (b'{"schemaVersion": 1, "fsLayers": []}', None, "schema1"),
        (_manifest(t.OCI_MANIFEST, schemaVersion=3), None, "schemaVersion"),
        (json.dumps({"schemaVersion": 2, "config": {}, "layers": []}).encode(), None, "malformed"),
        (_manifest("application/x-other"), None, "unsupported manifest media type"),
    ],
)
def test_bad_manifests(data: bytes, header: str | None, why: str) -> None:
    with pytest.raises(InvalidArgument, match=why):
        t.parse_manifest(data, header)


def test_docker_config_with_nulls_and_unknown_keys() -> None:
    doc = {
        "architecture": "amd64",
        "os": "linux",
        "created": "2024-01-01T00:00:00Z",
        "container_config": {"Hostname": "abc"},
        "docker_version": "20.10",
        "config": {
            "User": "1000",
            "Env": None,
            "Cmd": ["sh"],
            "Entrypoint": None,
            "WorkingDir": "/w",
            "ExposedPorts": {"80/tcp": {}},
            "Volumes": {"/data": {}},
            "Labels": {"a": "b"},
            "StopSignal": "SIGTERM",
            "OnBuild": None,
        },
        "rootfs": {"type": "layers", "diff_ids": [B, C]},
        "history": [{"created_by": "x", "empty_layer": True}, {"created_by": "y"}, {}],
    }
    data = json.dumps(doc).encode()
    config = t.parse_config(data)
    assert config.raw == data
    assert config.config.env is None and config.config.cmd == ["sh"]
    assert config.config.user == "1000" and config.config.working_dir == "/w"
    assert config.config.exposed_ports == {"80/tcp": {}}
    assert config.config.volumes == {"/data": {}}
    assert config.config.labels == {"a": "b"}
    assert config.config.stop_signal == "SIGTERM"
    assert config.rootfs.diff_ids == [B, C]
    assert [h.empty_layer for h in config.history] == [True, False, False]
    assert t.unstructure(config.config)["ExposedPorts"] == {"80/tcp": {}}


def test_bad_configs() -> None:
    with pytest.raises(InvalidArgument, match="diff_id"):
        t.parse_config(json.dumps({"rootfs": {"type": "layers", "diff_ids": ["md5:x"]}}).encode())
    with pytest.raises(InvalidArgument, match="malformed ImageConfig"):
        t.parse_config(json.dumps({"config": {"Cmd": 42}}).encode())
    with pytest.raises(InvalidArgument, match="malformed ImageConfig"):
        t.parse_config(json.dumps({"config": {"Entrypoint": ["sh", 1]}}).encode())


def test_string_entrypoint_and_cmd_are_one_element_lists() -> None:
    # docker's StrSlice: a plain string is one argument (not split, not refused).
    config = t.parse_config(json.dumps(
        {"config": {"Entrypoint": "/bin/sh -c", "Cmd": "echo hi"}}).encode())
    assert config.config.entrypoint == ["/bin/sh -c"] and config.config.cmd == ["echo hi"]
