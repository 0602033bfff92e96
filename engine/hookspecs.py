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
    from engine.plugin import CredentialsLookup, CredentialSource, Register

hookspec = pluggy.HookspecMarker("engine")


# --- configuration -------------------------------------------------------------------------


@hookspec(historic=True)
def engine_configure(config: dict[str, Any]) -> None:
    """Called once with the daemon's resolved configuration (a plain dict: ``root``,
    ``run_root``, ``config_dir`` (None when not given), plus the plugin's own section under ``plugins.<name>``).
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


# --- volumes ---------------------------------------------------------------------------------


@hookspec
def engine_add_volume_drivers(register: Register, config: dict[str, Any]) -> None:
    """Register volume drivers with ``register.volume_driver(driver)``.

    ``driver`` satisfies ``engine.plugin.VolumeDriver``: a ``name`` (what ``volume create
    --driver NAME`` and ``--mount volume-driver=NAME`` select), ``availability()``, and
    async ``create/remove`` (a volume's storage, given its name and ``--opt`` options),
    ``mount/unmount`` (called when the first running container needs the volume and when
    no running container does any more; ``mount`` returns the host directory to bind into
    containers and must be idempotent: after a daemon restart it is called again for a
    volume that is still mounted) and ``usage`` (bytes on disk, or -1). The engine keeps
    each volume's record (name, driver, options, labels) and its reference counts; the
    built-in ``local`` driver is ``engine.plugins.volume_local``."""


# --- registries ------------------------------------------------------------------------------


@hookspec
def engine_add_registry_clients(
    register: Register, config: dict[str, Any], credentials: CredentialsLookup
) -> None:
    """Register registry clients with ``register.registry_client(client)``.

    ``client`` satisfies ``engine.plugin.RegistryClient`` (checked at registration): a
    ``name``, ``capabilities`` (the optional abilities it declares, e.g.
    ``RegistryCapability.BLOB_TEE``), ``handles(host)``, ``reconfigure(config)`` (SIGHUP),
    async ``get_manifest``, ``fetch_blob``, ``blob_exists``, ``push_blob``,
    ``push_manifest``, ``check_login``, and ``forget_credentials``; the protocol has their
    exact signatures.

    For each registry host the engine uses the first registered client whose
    ``handles(host)`` is true, in hook call order; the built-in
    ``engine.plugins.registry.client.DistributionClient`` handles every host and is
    registered ``trylast``. When no client handles a host, the pull, push or login fails
    with ``Unavailable`` naming the host.

    ``credentials`` is the engine's async ``host -> RegistryCredentials | None`` (it asks
    ``engine_registry_credentials``): a client uses it for every registry that asks for
    authentication, and must not cache its answers past ``forget_credentials(host)``."""


@hookspec(firstresult=True)
def engine_registry_credentials(host: str, config: dict[str, Any]) -> CredentialSource | None:
    """Where the credentials of registry ``host`` (``HOST[:PORT]``; ``docker.io`` for Docker
    Hub) come from: an ``engine.plugin.CredentialSource``, whose async ``get(host)`` the
    engine then awaits, or None when this plugin has no say about ``host``. Stops at the
    first non-None result. Called each time a registry asks for authentication; it must not
    block (do the I/O in ``get``).

    The built-in answer (``trylast``, so it answers for every host no other plugin took)
    reads the daemon's docker-compatible auth file that ``engctl login`` writes
    (``engine.images.auth_config``): a helper named for the host in ``credHelpers``, else
    the ``credsStore`` helper, is run as ``docker-credential-NAME get`` (docker's protocol,
    with a time limit); without one, the file's ``auths`` entry answers."""
