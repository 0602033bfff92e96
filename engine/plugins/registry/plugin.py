"""Registration of the distribution registry client.

Config keys read (the daemon's resolved config dict):

- ``insecure-registries``: list of ``HOST[:PORT]`` or CIDRs (plain HTTP allowed, TLS not
  verified). Loopback is not insecure unless listed.
- ``registry-mirrors``: list of mirror URLs for docker.io (dockerd's form), or a map
  ``registry -> [mirror URLs]``.
- ``config_dir`` (default ``/etc/engine``): CAs and client certs in ``certs.d/HOST:PORT/``.
- ``max_concurrent_downloads`` (default 3), ``max_blob_size`` (default 64 GiB).
- ``auth-config``: the docker-style credentials file; default ``$ENGINE_AUTH_CONFIG``, else
  ``<config_dir>/auth.json`` (see ``engine.images.auth_config``).

Credentials: the client registered here reads the auth file itself. A daemon that wants
other plugins' ``engine_registry_credentials`` answers first sets
``client.auth.credentials`` to an async function that calls the hook.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio

from engine.images import auth_config
from engine.plugin import Register, hookimpl
from engine.plugins.registry.auth import Credentials
from engine.plugins.registry.client import DistributionClient
from engine.plugins.registry.transport import RegistrySettings

_auth_path: Path = auth_config.default_auth_path()


def credentials_from_file(path: Path, host: str) -> Credentials | None:
    found = auth_config.lookup(path, host)
    return Credentials(*found) if found else None


def build_client(config: dict[str, Any]) -> DistributionClient:
    path = auth_config.default_auth_path(config)

    async def credentials(host: str) -> Credentials | None:
        return await trio.to_thread.run_sync(credentials_from_file, path, host)

    return DistributionClient(
        RegistrySettings.from_config(config),
        credentials=credentials,
        max_concurrent_downloads=int(config.get("max_concurrent_downloads", 3)),
        max_blob_size=int(config.get("max_blob_size", 64 * 1024**3)),
    )


@hookimpl
def engine_configure(config: dict[str, Any]) -> None:
    global _auth_path
    _auth_path = auth_config.default_auth_path(config)


@hookimpl
def engine_add_registry_clients(register: Register, config: dict[str, Any]) -> None:
    register.registry_client(build_client(config))


@hookimpl
def engine_registry_credentials(host: str) -> Credentials | None:
    """The built-in answer: the auth file written by ``engctl login`` (blocking read of a
    small file; pluggy hooks are synchronous)."""
    return credentials_from_file(_auth_path, host)
