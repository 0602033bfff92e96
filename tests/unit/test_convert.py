"""engine.convert: the three converters made by one factory, and the hooks they share."""

from __future__ import annotations

import attrs
import pytest

from engine.actors.model import ContainerConfig, PortMapping
from engine.convert import ValidationError, describe_error, disk, documents, field_meta, wire


@attrs.define
class Params:
    name: str
    count: int = 0
    ratio: float = 1.0
    tags: list[str] = attrs.field(factory=list)
    labels: dict[str, str] = attrs.field(factory=dict)


@attrs.frozen
class Doc:
    media_type: str = attrs.field(metadata=field_meta(name="mediaType"))
    kind: str = attrs.field(default="layers", metadata=field_meta(keep_default=True))
    note: str = ""
    items: list[str] = attrs.field(factory=list)
    raw: bytes = attrs.field(default=b"", metadata=field_meta(omit=True))


@pytest.mark.parametrize(
    ("params", "where"),
    [
        ({"name": 5}, "$.name"),
        ({"name": "a", "count": "5"}, "$.count"),
        ({"name": "a", "count": True}, "$.count"),
        ({"name": "a", "tags": "ab"}, "$.tags"),
        ({"name": "a", "labels": [["k", "v"]]}, "$.labels"),
    ],
)
def test_wire_refuses_wrong_types_naming_the_field(params: dict[str, object], where: str) -> None:
    with pytest.raises(ValidationError) as info:
        wire.structure(params, Params)
    assert where in describe_error(info.value)


def test_wire_refuses_unknown_keys_and_takes_an_int_for_a_float() -> None:
    with pytest.raises(ValidationError) as info:
        wire.structure({"name": "a", "colour": "red"}, Params)
    assert "colour" in describe_error(info.value)
    assert wire.structure({"name": "a", "ratio": 2, "tags": ("x",)}, Params) == Params(
        "a", ratio=2, tags=["x"]
    )


def test_disk_ignores_unknown_keys_and_round_trips_a_container_config() -> None:
    config = ContainerConfig(
        id="c" * 64, name="web", image="busybox", image_id="sha256:" + "a" * 64,
        created=1.5, runtime="runc", ports=[PortMapping(8080, 80)], labels={"a": "b"},
    )
    data = disk.unstructure(config)
    assert disk.structure({**data, "field_from_a_newer_engine": 1}, ContainerConfig) == config


def test_documents_rename_omit_keep_defaults_and_read_null_as_absent() -> None:
    doc = Doc("text/plain", raw=b"x")
    assert documents.unstructure(doc) == {"mediaType": "text/plain", "kind": "layers"}
    parsed = documents.structure(
        {"mediaType": "m", "note": None, "items": None, "raw": "ignored", "extra": 1}, Doc
    )
    assert parsed == Doc("m")
    with pytest.raises(ValidationError):
        documents.structure({"mediaType": None}, Doc)  # required: null is not absent
    with pytest.raises(ValidationError):
        documents.structure({"mediaType": 3}, Doc)
