"""Reference parsing and normalisation, checked against docker's own examples."""

from __future__ import annotations

import pytest

from engine.errors import InvalidArgument
from engine.reference import (
    is_image_id_prefix,
    normalize_image_id,
    parse_reference,
    parse_repository,
)

D = "sha256:" + "a" * 64


@pytest.mark.parametrize(
    ("text", "full", "familiar"),
    [
        ("busybox", "docker.io/library/busybox:latest", "busybox:latest"),
        ("busybox:1.36", "docker.io/library/busybox:1.36", "busybox:1.36"),
        ("library/busybox", "docker.io/library/busybox:latest", "busybox:latest"),
        ("docker.io/busybox", "docker.io/library/busybox:latest", "busybox:latest"),
        ("index.docker.io/busybox", "docker.io/library/busybox:latest", "busybox:latest"),
        ("user/repo", "docker.io/user/repo:latest", "user/repo:latest"),
        ("user/repo/sub:v1", "docker.io/user/repo/sub:v1", "user/repo/sub:v1"),
        ("localhost/x", "localhost/x:latest", "localhost/x:latest"),
        ("localhost:5000/a/b:t", "localhost:5000/a/b:t", "localhost:5000/a/b:t"),
        ("127.0.0.1:5000/x:1", "127.0.0.1:5000/x:1", "127.0.0.1:5000/x:1"),
        ("quay.io/org/img:v1.2_3-rc", "quay.io/org/img:v1.2_3-rc", "quay.io/org/img:v1.2_3-rc"),
        ("[::1]:5000/x", "[::1]:5000/x:latest", "[::1]:5000/x:latest"),
        ("Registry.Example/x", "Registry.Example/x:latest", "Registry.Example/x:latest"),
        ("a.b/c__d/e--f/g.h_i", "a.b/c__d/e--f/g.h_i:latest", "a.b/c__d/e--f/g.h_i:latest"),
        (f"busybox@{D}", f"docker.io/library/busybox@{D}", f"busybox@{D}"),
        (f"busybox:1@{D}", f"docker.io/library/busybox:1@{D}", f"busybox:1@{D}"),
        (f"localhost:5000/x@{D}", f"localhost:5000/x@{D}", f"localhost:5000/x@{D}"),
    ],
)
def test_valid_references(text: str, full: str, familiar: str) -> None:
    ref = parse_reference(text)
    assert str(ref) == full
    assert ref.familiar() == familiar
    assert parse_reference(str(ref)) == ref  # normalised form is a fixed point


def test_parts_and_helpers() -> None:
    ref = parse_reference("localhost:5000/team/app:v2")
    assert (ref.domain, ref.path, ref.tag, ref.digest) == ("localhost:5000", "team/app", "v2", None)
    assert ref.name == "localhost:5000/team/app"
    assert str(ref.with_tag("v3")) == "localhost:5000/team/app:v3"
    assert str(ref.with_digest(D)) == f"localhost:5000/team/app:v2@{D}"
    assert str(parse_repository("busybox")) == "docker.io/library/busybox"
    with pytest.raises(InvalidArgument, match="invalid tag"):
        ref.with_tag(".bad")


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "empty"),
        ("Busybox", "must be lowercase"),
        ("user/Repo", "must be lowercase"),
        ("busybox:", "empty tag"),
        ("busybox@", "empty digest"),
        (":tag", "repository name is empty"),
        ("-busybox", "path component"),
        ("busy..box", "path component"),
        ("busybox:-tag", "invalid tag"),
        ("busybox:" + "t" * 129, "invalid tag"),
        ("busybox:a/b", "not a valid registry"),
        ("busybox@sha256:1234", "invalid digest"),
        ("busybox@md5:" + "a" * 32, "only handles sha256"),
        ("a" * 64, "64-byte hexadecimal"),
        ("host:port/x", "not a valid registry"),
        ("x/" + "a" * 260, "longer than 255"),
        ("a b", "path component|invalid tag"),
    ],
)
def test_invalid_references(text: str, why: str) -> None:
    with pytest.raises(InvalidArgument, match=why):
        parse_reference(text)


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ("abc", True),
        ("3f57d9401f8d", True),
        ("sha256:3f5", True),
        ("a" * 64, True),
        ("ab", False),
        ("xyz", False),
        ("sha256:", False),
        ("a" * 65, False),
    ],
)
def test_image_id_prefixes(text: str, ok: bool) -> None:
    assert is_image_id_prefix(text) is ok
    if ok:
        assert normalize_image_id(text).startswith("sha256:")
    else:
        with pytest.raises(InvalidArgument):
            normalize_image_id(text)
