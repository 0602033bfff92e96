"""The public API for plugin authors.

A plugin is a module (or object) with ``@hookimpl`` functions named after the hooks in
``engine.hookspecs``, published under the entry-point group ``engine.plugins``::

    # pyproject.toml of the plugin package
    [project.entry-points."engine.plugins"]
    myruntime = "my_package.plugin"

    # my_package/plugin.py
    from engine.plugin import hookimpl

    @hookimpl
    def engine_add_runtimes(register, config):
        register.runtime(MyRuntime(config))

The objects a plugin registers satisfy the protocols below. Their I/O methods are async and
run inside the daemon's trio loop: they must not block (use ``trio.run_process`` and
``trio.to_thread.run_sync``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import attrs
import pluggy

hookimpl = pluggy.HookimplMarker("engine")

ENTRY_POINT_GROUP = "engine.plugins"


@attrs.frozen
class Availability:
    """Whether a plugin's component can work on this host, and if not, why and what to do."""

    ok: bool
    reason: str = ""

    @classmethod
    def yes(cls) -> Availability:
        return cls(True, "")

    @classmethod
    def no(cls, reason: str) -> Availability:
        return cls(False, reason)


# --- runtimes ------------------------------------------------------------------------------


@attrs.frozen
class CreateRequest:
    """What a runtime needs to create a container from a prepared OCI bundle."""

    container_id: str
    bundle: Path  # holds config.json; root.path points at the mounted root filesystem
    state_dir: Path  # per-container dir under --run-root for the monitor's files
    log_path: Path  # the container's output, size-capped by the monitor
    log_size_max: int = 16 * 1024 * 1024
    terminal: bool = False
    # fsync the log once the container ended; pointless for a container removed on exit
    sync_log: bool = True


@attrs.frozen
class Created:
    """Processes that exist once ``create`` returns."""

    container_pid: int
    monitor_pid: int


@attrs.frozen
class RuntimeState:
    """The runtime's view of a container (``runc state``)."""

    id: str
    status: str  # creating | created | running | paused | stopped
    pid: int


@attrs.frozen
class ExitInfo:
    exit_code: int
    oom_killed: bool = False
    finished_at: float | None = None  # unix time
    signal: int | None = None


@runtime_checkable
class Runtime(Protocol):
    """An OCI runtime driven through a per-container monitor (conmon).

    The monitor, not the daemon, is the container's parent: it keeps the container's output
    in ``log_path`` and records the exit code in ``state_dir``, so the container outlives
    the daemon and ``wait_exit`` works for a container the daemon adopted after a restart.

    Every method below is called by the engine; none is probed for. A runtime built on
    ``engine.oci.cli_runtime.CLIRuntime`` (runc, crun and the like) has them all; the two
    that only refine the behaviour have obvious defaults there (``adapt_spec`` returns the
    spec unchanged, ``create_when_ready`` prepares the bundle and then calls ``create``).

    Errors: ``NotFound`` for a container the runtime does not know, ``Conflict`` for a verb
    not allowed in its state, ``CommandNotFound``/``CommandNotExecutable`` when the
    container's command cannot be run (docker's 127/126), ``RuntimeFailure`` otherwise.
    The engine bounds every call with its own time limit.
    """

    name: str

    def availability(self) -> Availability: ...

    def adapt_spec(self, spec: dict[str, Any]) -> dict[str, Any]:
        """Called (in a worker thread) on the OCI config before it is written to the bundle,
        for what only this runtime understands (crun: its annotation carrying the
        precompiled seccomp program). Return ``spec`` itself when there is nothing to add."""
        ...

    async def create(self, request: CreateRequest) -> Created: ...

    async def create_when_ready(self, request: CreateRequest,
                                prepare_bundle: Callable[[], Awaitable[None]]) -> Created:
        """``create`` called *before* the bundle exists: the runtime may start its monitor
        first, then must await ``prepare_bundle()`` (which writes ``request.bundle``) before
        anything reads the bundle; if that raises, it must leave nothing behind and
        re-raise. Without anything to overlap: ``await prepare_bundle()`` then ``create``."""
        ...

    async def start(self, container_id: str) -> None: ...

    async def kill(self, container_id: str, signal: int, *, all_processes: bool = False) -> None: ...

    async def pause(self, container_id: str) -> None: ...

    async def resume(self, container_id: str) -> None: ...

    async def delete(self, container_id: str, *, force: bool = False) -> None:
        """Forget the container (``force``: kill it first). An unknown container either
        succeeds or raises ``NotFound``."""
        ...

    async def state(self, container_id: str) -> RuntimeState | None:
        """None when the runtime does not know the container."""
        ...

    async def wait_exit(self, container_id: str, state_dir: Path) -> ExitInfo:
        """Wait until the container has exited and the monitor recorded it."""
        ...

    def read_exit(self, container_id: str, state_dir: Path) -> ExitInfo | None:
        """The recorded exit, if the container has exited (no waiting). Blocking: the
        engine calls it in a worker thread."""
        ...

    async def exec(self, container_id: str, process: dict[str, Any], **options: Any) -> Any:
        """Run an extra process (an OCI runtime-spec ``process`` object) in the container.
        Returns a handle with ``stdout``/``stderr`` streams, ``wait()``, ``kill(sig)`` and
        ``aclose()`` (``engine.oci.exec.ExecHandle``)."""
        ...


# --- storage -------------------------------------------------------------------------------


@attrs.frozen
class LayerInfo:
    diff_id: str  # sha256 of the uncompressed tar: "sha256:<hex>"
    size: int  # bytes on disk after unpacking (approximate)


@attrs.frozen
class StorageUsage:
    layers: int
    layers_bytes: int
    containers: int
    containers_bytes: int


@attrs.frozen
class StaleReport:
    """What a storage driver's start-up clean-up found: debris it removed, and the
    containers whose root filesystems are still mounted."""

    removed: list[str]
    mounted: list[str]


class LayerStream(Protocol):
    """What ``StorageDriver.layer_stream`` yields: a tee that unpacks a layer while its blob
    downloads, finished with the verified blob."""

    async def begin(self, partial: Path, offset: int) -> None: ...

    async def data(self, chunks: list[bytes]) -> None: ...

    async def finish(self, blob: Path) -> object: ...


@runtime_checkable
class StorageDriver(Protocol):
    """Layers and container root filesystems. Every method is called by the engine."""

    name: str

    def availability(self) -> Availability: ...

    async def has_layer(self, diff_id: str) -> bool: ...

    async def unpack_layer(self, blob: Path, *, expected_diff_id: str | None = None) -> LayerInfo:
        """Unpack a layer blob (gzip, zstd or plain tar; detected by magic) exactly once.

        Raises ``DigestMismatch`` when the uncompressed digest differs from
        ``expected_diff_id`` and ``UnsafeContent`` for entries escaping the layer; nothing
        half-unpacked stays visible either way."""
        ...

    async def remove_layer(self, diff_id: str) -> None: ...

    async def list_layers(self) -> list[str]: ...

    async def mount(
        self, container_id: str, layers: list[str], *, read_only: bool = False
    ) -> Path:
        """Mount the container's root filesystem: ``layers`` (diff_ids, bottom first) plus
        the container's own writable layer, created on first use. Returns the mount point.
        Idempotent: mounting a mounted container returns the same path."""
        ...

    async def unmount(self, container_id: str) -> None: ...

    async def remove_container(self, container_id: str) -> None: ...

    async def usage(self) -> StorageUsage: ...

    async def layer_info(self, diff_id: str) -> LayerInfo: ...

    async def layer_written_at(self, diff_id: str) -> float | None:
        """When the layer was committed; None if it is not here (the image store's
        writeback check after a power loss)."""
        ...

    def layer_stream(self, diff_id: str) -> AbstractAsyncContextManager[LayerStream | None]:
        """Unpack a layer while its blob downloads: an async context manager yielding a
        ``LayerStream``, or None when the layer is here already *or the driver cannot
        stream* (the engine then downloads first and calls ``unpack_layer``)."""
        ...

    async def cleanup_stale(self) -> StaleReport:
        """At daemon start: remove what interrupted operations left; report mounted
        containers. Must not fail on one bad leftover: log it and go on."""
        ...


# --- registries ----------------------------------------------------------------------------


@runtime_checkable
class RegistryClient(Protocol):
    name: str

    def handles(self, host: str) -> bool: ...


# --- registration --------------------------------------------------------------------------


@attrs.define
class Register:
    """Handed to the ``engine_add_*`` hooks; collects what plugins offer (tox pattern)."""

    runtimes: dict[str, Runtime] = attrs.field(factory=dict)
    storage_drivers: dict[str, StorageDriver] = attrs.field(factory=dict)
    registry_clients: list[RegistryClient] = attrs.field(factory=list)
    owners: dict[str, str] = attrs.field(factory=dict)  # "runtime:runc" -> plugin name
    current_plugin: str = ""

    def runtime(self, runtime: Runtime) -> None:
        self._claim("runtime", runtime.name)
        self.runtimes[runtime.name] = runtime

    def storage_driver(self, driver: StorageDriver) -> None:
        self._claim("storage", driver.name)
        self.storage_drivers[driver.name] = driver

    def registry_client(self, client: RegistryClient) -> None:
        self._claim("registry", client.name)
        self.registry_clients.append(client)

    def _claim(self, kind: str, name: str) -> None:
        from engine.errors import AlreadyExists

        key = f"{kind}:{name}"
        if key in self.owners:
            raise AlreadyExists(
                f"{kind} {name!r} is registered twice (by {self.owners[key]!r} and "
                f"{self.current_plugin!r}); disable one with ENGINE_DISABLED_PLUGINS"
            )
        self.owners[key] = self.current_plugin
