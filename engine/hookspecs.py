"""Every hook the engine calls, declared once, each with its contract.

Hooks are synchronous (pluggy has no async calling) and hand objects to a ``register``
object, tox-style; the engine then awaits those objects' async methods inside trio. A hook
implementation may accept a subset of the arguments declared here, so new arguments can be
added without breaking plugins.

Plugin authors import ``hookimpl`` and the protocols from ``engine.plugin``, not from here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from engine.plugin import Register

hookspec = pluggy.HookspecMarker("engine")


# --- configuration -------------------------------------------------------------------------


@hookspec(historic=True)
def engine_configure(config: dict[str, Any]) -> None:
    """Called once with the daemon's resolved configuration (a plain dict: ``root``,
    ``run_root``, ``config_dir``, plus the plugin's own section under ``plugins.<name>``).
    Historic: a plugin registered later still receives it."""


# --- runtimes --------------------------------------------------------------------------------


@hookspec
def engine_add_runtimes(register: Register, config: dict[str, Any]) -> None:
    """Register OCI runtimes with ``register.runtime(runtime)``.

    ``runtime`` satisfies ``engine.plugin.Runtime``: a ``name``, ``availability()`` (usable
    on this host, and why not), and async ``create/start/kill/pause/resume/delete/state/exec``
    on an OCI bundle. The name is what ``--runtime NAME`` selects."""


# --- storage ---------------------------------------------------------------------------------


@hookspec
def engine_add_storage_drivers(register: Register, config: dict[str, Any]) -> None:
    """Register storage drivers with ``register.storage_driver(driver)``.

    ``driver`` satisfies ``engine.plugin.StorageDriver``: unpack a layer from a tar stream
    (``unpack_layer``), mount and unmount a container's root filesystem (``mount`` /
    ``unmount``), remove layers and container layers (``remove_layer`` /
    ``remove_container``), and report ``usage``."""


# --- registries ------------------------------------------------------------------------------


@hookspec
def engine_add_registry_clients(register: Register, config: dict[str, Any]) -> None:
    """Register registry clients with ``register.registry_client(client)``.

    ``client`` satisfies ``engine.plugin.RegistryClient`` (``name``, ``handles(host)``) and
    offers what ``engine.images.pull``/``push`` call: ``get_manifest(ref)`` → (bytes,
    media type, digest), ``fetch_blob`` (verified, resumable, into the content store),
    ``blob_exists``, ``push_blob``, ``push_manifest`` and ``check_login``. The built-in is
    ``engine.plugins.registry.client.DistributionClient``."""


@hookspec(firstresult=True)
def engine_registry_credentials(host: str) -> Any:
    """Credentials for a registry host, or None. Stops at the first non-None result.
    The built-in answer reads the docker-compatible ``config.json`` written by
    ``engctl login``."""
