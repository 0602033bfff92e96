"""The registry plugin contract: clients checked at registration, chosen per host by
handles(), credentials through the engine_registry_credentials hook, capabilities declared,
settings reloaded by reconfigure()."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from engine.errors import InvalidArgument, Unavailable
from engine.images import auth_config
from engine.images.pull import pull
from engine.images.store import ImageStore
from engine.plugin import (
    Register,
    RegistryClient,
    RegistryCredentials,
    hookimpl,
    streaming_client,
)
from engine.pluginmanager import load_plugins
from engine.plugins.registry.client import DistributionClient
from engine.plugins.registry.transport import RegistrySettings
from engine.reference import parse_reference
from engine.testing.registry import Registry, registry_server

from .conftest import make_client, small_image

SPECIAL = "special.example:5000"


class SpecialClient(DistributionClient):
    """A third-party client for one host only (the distribution API underneath)."""

    name = "special"

    def handles(self, host: str) -> bool:
        return host == SPECIAL


class SpecialPlugin:
    """A plugin offering SpecialClient and the credentials of SPECIAL."""

    @hookimpl
    def engine_add_registry_clients(self, register: Register) -> None:
        register.registry_client(SpecialClient())

    @hookimpl
    def engine_registry_credentials(self, host: str) -> Any:
        return FixedCredentials() if host == SPECIAL else None


class FixedCredentials:
    name = "fixed"

    async def get(self, host: str) -> RegistryCredentials | None:
        return RegistryCredentials("special-user", "pw")


def test_an_incomplete_client_is_refused_at_registration() -> None:
    class HalfClient:
        name = "half"

        def handles(self, host: str) -> bool:
            return True

    register = Register(current_plugin="halfplugin")
    with pytest.raises(InvalidArgument, match=r"HalfClient of plugin 'halfplugin'.*lacks .*"
                       r"capabilities.*check_login.*push_blob"):
        register.registry_client(HalfClient())  # type: ignore[arg-type]
    assert register.registry_clients == []


def test_client_is_chosen_per_host_and_builtin_comes_last(tmp_path: Path) -> None:
    config = {"root": str(tmp_path), "config_dir": None}
    register = load_plugins(config, extra=[("special", SpecialPlugin())]).register
    assert [c.name for c in register.registry_clients] == ["special", "distribution"]
    assert register.registry_client_for(SPECIAL).name == "special"
    assert register.registry_client_for("quay.io").name == "distribution"

    only_special = Register(registry_clients=[SpecialClient()])
    with pytest.raises(Unavailable, match=r"no registry client plugin handles quay.io "
                       r"\(loaded: special\)"):
        only_special.registry_client_for("quay.io")
    with pytest.raises(Unavailable, match="no registry client plugin is loaded"):
        Register().registry_client_for("quay.io")


async def test_credentials_come_from_the_hook(tmp_path: Path) -> None:
    """A plugin's CredentialSource answers for its host; the built-in file for the rest."""
    config = {"root": str(tmp_path), "config_dir": None}
    auth_config.store_auth(tmp_path / "auth.json", "other.example:1", "file-user", "pw2")
    client = load_plugins(config, extra=[("special", SpecialPlugin())]).register.registry_client_for(
        "other.example:1"
    )
    assert isinstance(client, DistributionClient)
    lookup = client.auth.credentials
    assert await lookup(SPECIAL) == RegistryCredentials("special-user", "pw")
    assert await lookup("other.example:1") == RegistryCredentials("file-user", "pw2")
    assert await lookup("nobody.example:1") is None


def test_capabilities_are_declared() -> None:
    client = DistributionClient()
    assert isinstance(client, RegistryClient)
    assert streaming_client(client) is client

    class Plain(DistributionClient):
        capabilities = frozenset()

    assert streaming_client(Plain()) is None


async def test_pull_without_the_tee_capability(
    registry: Registry, store: ImageStore, pushed
) -> None:
    """A client that does not declare BLOB_TEE is never handed a tee; the layers are
    unpacked after download."""
    seen: list[dict[str, Any]] = []

    class Plain(DistributionClient):
        capabilities = frozenset()

        async def fetch_blob(self, *args: Any, **kwargs: Any) -> Path:
            seen.append(kwargs)
            return await super().fetch_blob(*args, **kwargs)

    pushed(small_image("plain"), "test/plain:latest")
    client = Plain(RegistrySettings(insecure=(registry.host,)))
    ref = parse_reference(f"{registry.host}/test/plain:latest")
    try:
        with trio.fail_after(30):
            image = await pull(client, store, ref)
    finally:
        await client.aclose()
    assert image.repo_tags == [str(ref)]
    assert seen and all("tee" not in kwargs for kwargs in seen)
    assert len(image.diff_ids) == len(await store.storage.list_layers())


async def test_reconfigure_applies_to_the_next_requests(
    tmp_path: Path, store: ImageStore, pushed
) -> None:
    with registry_server(tmp_path) as reg:  # plain HTTP
        pushed(small_image("reload"), "test/reload:latest", to=reg)
        ref = parse_reference(f"{reg.host}/test/reload:latest")
        client = make_client()  # not insecure: HTTPS only
        try:
            with trio.fail_after(30):
                with pytest.raises(Unavailable, match="insecure-registries"):
                    await client.get_manifest(ref)
                with pytest.raises(InvalidArgument, match="http:// or https://"):
                    client.reconfigure({"insecure-registries": [reg.host],
                                        "registry-mirrors": ["no-scheme.example"]})
                with pytest.raises(Unavailable, match="insecure-registries"):
                    await client.get_manifest(ref)  # the refused reload changed nothing
                client.reconfigure({"insecure-registries": [reg.host],
                                    "max_concurrent_downloads": 7})
                image = await pull(client, store, ref)
                assert client.download_limit.total_tokens == 7
                with pytest.raises(InvalidArgument, match="positive integer"):
                    client.reconfigure({"max_concurrent_downloads": 0})
                client.reconfigure({})  # unlisted again: HTTPS only
                with pytest.raises(Unavailable, match="insecure-registries"):
                    await client.get_manifest(ref)
        finally:
            await client.aclose()
    assert image.repo_tags == [str(ref)]
