"""Registration of the distribution registry client and of the built-in credential source.

Config keys read (the daemon's resolved config dict):

- ``insecure-registries``: list of ``HOST[:PORT]`` or CIDRs (plain HTTP allowed, TLS not
  verified). Loopback is not insecure unless listed.
- ``registry-mirrors``: list of mirror URLs for docker.io (dockerd's form), or a map
  ``registry -> [mirror URLs]``.
- ``config_dir`` (``/etc/engine`` when not given): CAs and client certs in
  ``certs.d/HOST:PORT/``.
- ``max_concurrent_downloads`` (default 3), ``max_blob_size`` (default 64 GiB).
- ``root`` / ``config_dir``: where the daemon's credentials file is
  (``engine.images.auth_config.auth_path``).

The first three are reloaded on SIGHUP (``DistributionClient.reconfigure``).

Credentials: the client asks the engine's ``credentials`` lookup, which asks the
``engine_registry_credentials`` hook; this plugin's answer (tried last, so other plugins
can take over a host) is the daemon's auth file with docker's credential helpers.
"""

from __future__ import annotations

from typing import Any

from engine.images import auth_config
from engine.plugin import CredentialsLookup, Register, hookimpl
from engine.plugins.registry.client import DistributionClient, no_credentials
from engine.plugins.registry.credhelpers import DockerConfigCredentials
from engine.plugins.registry.transport import RegistrySettings


def build_client(
    config: dict[str, Any], credentials: CredentialsLookup = no_credentials
) -> DistributionClient:
    return DistributionClient(
        RegistrySettings.from_config(config),
        credentials=credentials,
        max_concurrent_downloads=int(config.get("max_concurrent_downloads", 3)),
        max_blob_size=int(config.get("max_blob_size", 64 * 1024**3)),
    )


@hookimpl(trylast=True)  # handles every host: a plugin for particular hosts comes first
def engine_add_registry_clients(
    register: Register, config: dict[str, Any], credentials: CredentialsLookup
) -> None:
    register.registry_client(build_client(config, credentials))


@hookimpl(trylast=True)
def engine_registry_credentials(host: str, config: dict[str, Any]) -> DockerConfigCredentials:
    """The built-in answer for every host: the daemon's auth file (``engctl login``) and the
    credential helpers it names."""
    return DockerConfigCredentials(auth_config.auth_path(config))
