"""Registry settings (insecure, mirrors), mirrors against real registries, plugin glue."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from engine.errors import InvalidArgument
from engine.images.pull import pull
from engine.images.store import ImageStore
from engine.plugin import Register
from engine.plugins.registry import plugin
from engine.plugins.registry.client import DistributionClient, no_credentials
from engine.plugins.registry.transport import RegistrySettings
from engine.reference import parse_reference
from engine.testing.registry import Registry, registry_server

from .conftest import make_client, small_image


def test_insecure_names_and_cidrs() -> None:
    s = RegistrySettings(insecure=("myreg:5000", "10.0.0.0/8", "plainhost"))
    assert s.is_insecure("myreg:5000")
    assert not s.is_insecure("myreg:5001")
    assert s.is_insecure("10.1.2.3:5000")
    assert not s.is_insecure("11.1.2.3:5000")
    assert s.is_insecure("plainhost:443")
    assert not s.is_insecure("127.0.0.1:5000")  # loopback is not insecure by default


def test_mirror_config_forms() -> None:
    s = RegistrySettings.from_config({"registry-mirrors": ["https://mirror.example/"]})
    assert s.mirrors == {"docker.io": ("https://mirror.example",)}
    s = RegistrySettings.from_config({"registry-mirrors": {"quay.io": ["http://m:5000"]}})
    assert s.mirrors == {"quay.io": ("http://m:5000",)}
    with pytest.raises(InvalidArgument, match="http:// or https://"):
        RegistrySettings.from_config({"registry-mirrors": ["mirror.example"]})
    with pytest.raises(InvalidArgument, match="list of strings"):
        RegistrySettings.from_config({"insecure-registries": "a:1"})


def test_plugin_registers_distribution_client(tmp_path: Path) -> None:
    register = Register()
    plugin.engine_add_registry_clients(
        register, {"config_dir": str(tmp_path), "max_concurrent_downloads": 5}, no_credentials
    )
    [client] = register.registry_clients
    assert isinstance(client, DistributionClient)
    assert client.name == "distribution" and client.handles("quay.io")
    assert client.download_limit.total_tokens == 5
    assert client.transport.settings.certs_dir == tmp_path / "certs.d"


async def test_mirror_first_then_origin(
    tmp_path: Path, registry: Registry, store: ImageStore, pushed
) -> None:
    with registry_server(tmp_path) as mirror:
        pushed(small_image("mirrored"), "lib/m:latest", to=mirror)  # only on the mirror
        pushed(small_image("origin"), "lib/o:latest")  # only on the origin
        settings = RegistrySettings(
            insecure=(registry.host, mirror.host),
            mirrors={registry.host: (f"http://{mirror.host}",)},
        )
        client = make_client(settings=settings)
        try:
            with trio.fail_after(30):
                m = await pull(client, store, parse_reference(f"{registry.host}/lib/m:latest"))
                o = await pull(client, store, parse_reference(f"{registry.host}/lib/o:latest"))
        finally:
            await client.aclose()
    assert m.repo_tags == [f"{registry.host}/lib/m:latest"]
    assert o.repo_tags == [f"{registry.host}/lib/o:latest"]
    assert client.stats["mirror_fallbacks"] >= 1
