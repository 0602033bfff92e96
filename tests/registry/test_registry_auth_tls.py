"""TLS (certs.d CA), htpasswd Basic auth and token auth against a real docker-registry."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trio

from engine.errors import PermissionDenied, Unavailable
from engine.images import auth_config
from engine.images.pull import pull
from engine.images.store import ImageStore
from engine.pluginmanager import load_plugins
from engine.plugins.registry.auth import Credentials
from engine.plugins.registry.transport import RegistrySettings
from engine.reference import parse_reference
from engine.testing.registry import install_ca, registry_server, token_server

from .conftest import make_client, small_image

USERS = {"alice": "s3cret"}


def creds_for(table: dict[str, Credentials]):
    async def lookup(host: str) -> Credentials | None:
        return table.get(host)

    return lookup


async def test_tls_with_ca_in_certs_d(tmp_path: Path, store: ImageStore, pushed) -> None:
    with registry_server(tmp_path, tls=True) as reg:
        pushed(small_image("tls"), "test/tls:latest", to=reg)
        ref = parse_reference(f"{reg.host}/test/tls:latest")
        certs = tmp_path / "certs.d"
        untrusting = make_client(settings=RegistrySettings(certs_dir=certs))
        try:
            with trio.fail_after(30), pytest.raises(Unavailable, match=r"not trusted.*ca\.crt"):
                await untrusting.get_manifest(ref)
        finally:
            await untrusting.aclose()
        install_ca(certs, reg.host, reg.tls.ca_pem)  # type: ignore[union-attr]
        trusting = make_client(settings=RegistrySettings(certs_dir=certs))
        try:
            with trio.fail_after(30):
                image = await pull(trusting, store, ref)
        finally:
            await trusting.aclose()
        assert image.repo_tags == [f"{reg.host}/test/tls:latest"]


async def test_insecure_tls_registry_skips_verification(tmp_path: Path, content) -> None:
    with registry_server(tmp_path, tls=True) as reg:
        client = make_client(reg.host)
        try:
            with trio.fail_after(30), pytest.raises(Exception) as info:
                await client.get_manifest(parse_reference(f"{reg.host}/none/x:latest"))
            # it got through TLS (unverified) to the registry's own 404
            assert "not found" in str(info.value)
            assert (await client.transport.origin(reg.host)).base_url.startswith("https://")
        finally:
            await client.aclose()


async def test_basic_auth(tmp_path: Path, store: ImageStore, pushed) -> None:
    with registry_server(tmp_path, users=USERS) as reg:
        pushed(small_image("basic"), "test/basic:latest", to=reg, creds=("alice", "s3cret"))
        ref = parse_reference(f"{reg.host}/test/basic:latest")
        anonymous = make_client(reg.host)
        wrong = make_client(reg.host, credentials=creds_for({reg.host: Credentials("alice", "x")}))
        good = make_client(
            reg.host, credentials=creds_for({reg.host: Credentials("alice", "s3cret")})
        )
        try:
            with trio.fail_after(30):
                with pytest.raises(PermissionDenied, match="engctl login"):
                    await anonymous.get_manifest(ref)
                with pytest.raises(PermissionDenied):
                    await wrong.get_manifest(ref)
                image = await pull(good, store, ref)
        finally:
            for c in (anonymous, wrong, good):
                await c.aclose()
        assert image.repo_tags == [str(ref)]


async def test_token_auth(tmp_path: Path, store: ImageStore, pushed) -> None:
    with token_server(tmp_path, USERS) as tokens, registry_server(tmp_path, token=tokens) as reg:
        pushed(small_image("token"), "test/token:latest", to=reg, creds=("alice", "s3cret"))
        ref = parse_reference(f"{reg.host}/test/token:latest")
        anonymous = make_client(reg.host)
        wrong = make_client(reg.host, credentials=creds_for({reg.host: Credentials("alice", "x")}))
        good = make_client(
            reg.host, credentials=creds_for({reg.host: Credentials("alice", "s3cret")})
        )
        try:
            with trio.fail_after(30):
                with pytest.raises(PermissionDenied, match="engctl login"):
                    await anonymous.get_manifest(ref)
                with pytest.raises(PermissionDenied, match="refused user 'alice'"):
                    await wrong.get_manifest(ref)
                image = await pull(good, store, ref)
                # the token is cached per scope: a second fetch asks the token server no more
                before = good.auth.token_requests
                await good.get_manifest(ref)
                assert good.auth.token_requests == before
        finally:
            for c in (anonymous, wrong, good):
                await c.aclose()
        assert image.repo_tags == [str(ref)]
        asked = [r["query"].get("scope") for r in tokens.requests if r["user"] == "alice"]
        assert ["repository:test/token:pull"] in asked


async def test_plugins_read_the_daemons_auth_file(
    tmp_path: Path, store: ImageStore, pushed
) -> None:
    """The loaded plugins (entry points, as the daemon loads them): the registry client
    asks the engine_registry_credentials hook, whose built-in answer is the auth file under
    the daemon's root when no config dir was given."""
    with registry_server(tmp_path, users=USERS) as reg:
        pushed(small_image("file"), "test/file:latest", to=reg, creds=("alice", "s3cret"))
        config = {"root": str(tmp_path / "root"), "config_dir": None,
                  "insecure-registries": [reg.host]}
        auth_config.store_auth(tmp_path / "root" / "auth.json", reg.host, "alice", "s3cret")
        client = load_plugins(config).register.registry_client_for(reg.host)
        try:
            with trio.fail_after(30):
                image = await pull(client, store, parse_reference(f"{reg.host}/test/file:latest"))
        finally:
            await client.aclose()  # type: ignore[attr-defined]
        assert image.repo_tags == [f"{reg.host}/test/file:latest"]


def test_auth_config_file(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "config.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"credsStore": "keep-me", "auths": {}}))
    auth_config.store_auth(path, "docker.io", "bob", "pw:with:colons")
    auth_config.store_auth(path, "127.0.0.1:5000", "alice", "x")
    assert path.stat().st_mode & 0o777 == 0o600
    doc = json.loads(path.read_text())
    assert doc["credsStore"] == "keep-me"
    assert set(doc["auths"]) == {"https://index.docker.io/v1/", "127.0.0.1:5000"}
    assert auth_config.lookup(path, "index.docker.io") == ("bob", "pw:with:colons")
    assert auth_config.load_auths(path)["127.0.0.1:5000"] == ("alice", "x")
    assert auth_config.remove_auth(path, "127.0.0.1:5000") is True
    assert auth_config.remove_auth(path, "127.0.0.1:5000") is False
    assert auth_config.lookup(path, "127.0.0.1:5000") is None
    assert auth_config.load_auths(tmp_path / "missing.json") == {}


async def test_check_login(tmp_path: Path) -> None:
    with token_server(tmp_path, USERS) as tokens, registry_server(tmp_path, token=tokens) as t_reg:
        with registry_server(tmp_path, users=USERS) as b_reg:
            client = make_client(t_reg.host, b_reg.host)
            try:
                with trio.fail_after(30):
                    for reg in (t_reg, b_reg):
                        await client.check_login(reg.host, "alice", "s3cret")
                        with pytest.raises(PermissionDenied, match="refused"):
                            await client.check_login(reg.host, "alice", "wrong")
            finally:
                await client.aclose()


async def test_concurrent_first_requests_with_basic_auth(tmp_path: Path, content, pushed) -> None:
    """Issue 16 item 8 at the client level: a fresh client's concurrent first requests all
    meet the Basic challenge; a request that went out before another task cached the
    header must retry with it, not report the credentials as refused."""
    with registry_server(tmp_path, users=USERS) as reg:
        pushed(small_image("conc"), "test/conc:latest", to=reg, creds=("alice", "s3cret"))
        ref = parse_reference(f"{reg.host}/test/conc:latest")
        manifest = json.loads(await _raw_manifest(reg.host, ref))
        digests = [manifest["config"]["digest"], *(d["digest"] for d in manifest["layers"])]
        client = make_client(
            reg.host, credentials=creds_for({reg.host: Credentials("alice", "s3cret")})
        )
        found: list[bool] = []

        async def exists(digest: str) -> None:
            found.append(await client.blob_exists(ref, digest))

        try:
            with trio.fail_after(30):
                async with trio.open_nursery() as nursery:
                    for digest in digests * 3:
                        nursery.start_soon(exists, digest)
        finally:
            await client.aclose()
        assert found == [True] * len(digests) * 3


async def _raw_manifest(host: str, ref) -> bytes:
    client = make_client(host, credentials=creds_for({host: Credentials("alice", "s3cret")}))
    try:
        data, _, _ = await client.get_manifest(ref)
    finally:
        await client.aclose()
    return data
