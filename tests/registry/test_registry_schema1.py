"""Docker schema1 (signed) manifests: digest over the payload, converted on pull."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import trio

from engine.images.pull import pull
from engine.images.store import ImageStore
from engine.images.types import DOCKER_MANIFEST, DOCKER_SCHEMA1_SIGNED
from engine.plugins.registry import schema1
from engine.reference import parse_reference
from engine.testing.registry import registry_server

from .conftest import make_client
from .oci_layouts import make_image, make_layer
from .schema1_sign import sign_schema1


def _schema1_manifest(name: str, tag: str, layers: list[str]) -> dict:
    # top first, like docker 1.x; the middle entry is a metadata-only ("throwaway") step
    v1 = [
        {
            "id": "c" * 64,
            "parent": "b" * 64,
            "created": "2020-01-01T00:00:02Z",
            "architecture": "amd64",
            "os": "linux",
            "config": {"Cmd": ["sh"], "Env": ["PATH=/bin"]},
            "container_config": {"Cmd": ["/bin/sh", "-c", "#(nop) ADD top"]},
        },
        {
            "id": "b" * 64,
            "parent": "a" * 64,
            "throwaway": True,
            "container_config": {"Cmd": ["/bin/sh", "-c", "#(nop) ENV x=y"]},
        },
        {"id": "a" * 64, "container_config": {"Cmd": ["/bin/sh", "-c", "#(nop) ADD base"]}},
    ]
    empty = "sha256:a3ed95caeb02ffe68cdd9fd84406680ae93d633cb16422d00e8a7c22955b46d4"
    return {
        "schemaVersion": 1,
        "name": name,
        "tag": tag,
        "architecture": "amd64",
        "fsLayers": [{"blobSum": layers[1]}, {"blobSum": empty}, {"blobSum": layers[0]}],
        "history": [{"v1Compatibility": json.dumps(h)} for h in v1],
    }


def test_signed_schema1_digest_excludes_signatures() -> None:
    manifest = _schema1_manifest("x/y", "t", ["sha256:" + "1" * 64, "sha256:" + "2" * 64])
    signed = sign_schema1(manifest)
    assert b'"signatures"' in signed
    payload = schema1.payload(signed)
    assert b'"signatures"' not in payload
    assert json.loads(payload) == manifest
    assert schema1.manifest_digest(signed) == "sha256:" + hashlib.sha256(payload).hexdigest()
    converted = schema1.convert(signed)
    assert converted.layers == ["sha256:" + "1" * 64, "sha256:" + "2" * 64]  # bottom first
    assert [h.get("empty_layer", False) for h in converted.config["history"]] == [
        False,
        True,
        False,
    ]


async def test_pull_signed_schema1(tmp_path: Path, store: ImageStore, pushed) -> None:
    base = make_layer({"base": b"base\n"})
    top = make_layer({"top": b"top\n"})
    empty = make_layer({})  # schema1's throwaway layers point at a real (empty) blob
    with registry_server(tmp_path, schema1=True) as reg:
        # get the blobs into the repository, then replace the tag with a schema1 manifest
        pushed(make_image([base, top, empty]), "old/img:blobs", to=reg)
        manifest = _schema1_manifest("old/img", "v1", [base.blob.digest, top.blob.digest])
        manifest["fsLayers"][1]["blobSum"] = empty.blob.digest
        signed = sign_schema1(manifest)
        body = tmp_path / "schema1.json"
        body.write_bytes(signed)
        put = await trio.run_process(
            [
                "curl",
                "-sS",
                "-X",
                "PUT",
                "-H",
                f"Content-Type: {DOCKER_SCHEMA1_SIGNED}",
                "--data-binary",
                f"@{body}",
                "-D",
                "-",
                f"http://{reg.host}/v2/old/img/manifests/v1",
            ],
            capture_stdout=True,
            capture_stderr=True,
        )
        assert b" 201 " in put.stdout, put.stdout + put.stderr
        client = make_client(reg.host)
        try:
            ref = parse_reference(f"{reg.host}/old/img:v1")
            with trio.fail_after(30):
                data, media_type, digest = await client.get_manifest(ref)
                assert media_type == DOCKER_SCHEMA1_SIGNED
                assert digest == schema1.manifest_digest(signed)
                # the registry names it by the same digest
                assert digest.encode() in put.stdout
                image = await pull(client, store, ref)
        finally:
            await client.aclose()
    assert image.manifest_media_type == DOCKER_MANIFEST
    assert image.diff_ids == [base.diff_id, top.diff_id]
    assert image.config.config.cmd == ["sh"]
