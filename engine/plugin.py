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

import base64
import enum
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast, runtime_checkable

import attrs
import pluggy

if TYPE_CHECKING:
    from engine.images.content import ContentStore
    from engine.reference import Reference

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
    terminal: bool = False  # a pseudo-terminal as the container's stdio
    stdin: bool = False  # keep a stdin open for attached clients to write to
    stdin_once: bool = False  # close that stdin when the first attached client closes its own
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

    def surviving_execs(self, container_id: str, work_dir: Path) -> list[Any]:
        """Exec sessions an earlier daemon started in ``work_dir`` (the ``work_dir`` given to
        ``exec``) and left behind, running or ended: each with ``session_id``, ``args``,
        ``pid``, ``wait()`` (its exit code; any number may wait), ``kill(sig)`` and
        ``aclose()`` (``engine.oci.exec.SurvivingExec``). Blocking: the engine calls it in a
        worker thread."""
        ...

    async def update(self, container_id: str, resources: dict[str, Any]) -> None:
        """Change a running container's cgroup limits: ``resources`` is an OCI
        ``linux.resources`` object holding only what changes (``memory.limit``,
        ``cpu.quota``/``cpu.period``, ``pids.limit``)."""
        ...

    async def exec(self, container_id: str, process: dict[str, Any], **options: Any) -> Any:
        """Run an extra process (an OCI runtime-spec ``process`` object) in the container.
        Returns a handle with ``stdout``/``stderr`` streams, ``wait()``, ``kill(sig)`` and
        ``aclose()`` (``engine.oci.exec.ExecHandle``). Options ``stdin=True``: the handle's
        ``stdin`` stream feeds the process; ``tty=True``: the process gets a pseudo-terminal
        and the handle a ``resize(rows, cols)`` (``engine.oci.exec.TtyExecHandle``)."""
        ...

    async def attach(self, container_id: str, bundle: Path) -> Any:
        """A connection to the running container's stdio, from now on, through its monitor:
        ``receive()`` → ``(stream, bytes)`` or None at the end, ``write(bytes)`` to its
        stdin, ``close_stdin()``, ``aclose()`` (``engine.oci.attach.ConmonAttach``).
        ``Conflict`` when the container is not running."""
        ...

    async def resize(self, container_id: str, bundle: Path, rows: int, cols: int) -> None:
        """Set the window size of the running container's terminal."""
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
    """What a storage driver's start-up clean-up found: debris it removed, the containers
    whose root filesystems are still mounted, and debris it could not remove (logged;
    retried after later removals and at the next start)."""

    removed: list[str]
    mounted: list[str]
    failed: list[str] = attrs.field(factory=list)


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

    async def changes(self, container_id: str) -> list[tuple[str, str]]:
        """The container's changes to its image (docker diff): ``(kind, path)`` with kind
        ``A`` (added), ``C`` (changed) or ``D`` (deleted), sorted by path."""
        ...

    async def diff_layer(self, container_id: str, dest: Path) -> None:
        """Write the container's changes as an uncompressed OCI layer tar at ``dest``
        (whiteouts ``.wh.NAME``, opaque directories ``.wh..wh..opq``): docker commit."""
        ...

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

    def layer_path(self, diff_id: str) -> Path:
        """Where the unpacked layer lives (``system df`` measures it as ``du`` would,
        ``system check`` looks for it)."""
        ...

    def container_layer_path(self, container_id: str) -> Path:
        """Where the container's writable layer lives (``system df``)."""
        ...

    def container_ids(self) -> list[str]:
        """The containers this driver holds a writable layer for (``system check`` finds
        those no container owns). Blocking; cheap (a directory listing)."""
        ...

    async def cleanup_stale(self) -> StaleReport:
        """At daemon start: remove what interrupted operations left; report mounted
        containers. Must not fail on one bad leftover: log it and go on."""
        ...


# --- registries ----------------------------------------------------------------------------


# --- volume drivers ------------------------------------------------------------------------


@runtime_checkable
class VolumeDriver(Protocol):
    """Keeps volumes' data (docker's volume plugins). The engine owns the records (name,
    driver, options, labels), decides when a volume is needed and calls the driver then;
    ``options`` is what the volume was created with (``--opt KEY=VALUE``).

    Errors are the engine's own: ``InvalidArgument`` for options the driver does not take
    (from ``create``, before anything is made), ``RuntimeFailure`` when a mount fails."""

    name: str

    def availability(self) -> Availability: ...

    async def create(self, name: str, options: dict[str, str]) -> None:
        """Check ``options`` and prepare the volume's storage (nothing mounted yet)."""
        ...

    async def remove(self, name: str, options: dict[str, str]) -> None:
        """Delete the volume's storage (it is unmounted). Idempotent."""
        ...

    async def mount(self, name: str, options: dict[str, str]) -> Path:
        """Make the data reachable; the host directory containers bind. Idempotent: after
        a daemon restart it is called for volumes that are still mounted."""
        ...

    async def unmount(self, name: str, options: dict[str, str]) -> None:
        """No running container needs the volume now. Idempotent."""
        ...

    async def usage(self, name: str, options: dict[str, str]) -> int:
        """Bytes the volume's data takes on disk (as ``du`` counts them), -1 if unknown."""
        ...


@attrs.frozen
class RegistryCredentials:
    """A user name and password (or token) for one registry."""

    username: str
    password: str = attrs.field(repr=False)

    def basic_header(self) -> str:
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode()


# async ``host -> credentials or None``: how a registry client asks for credentials
CredentialsLookup = Callable[[str], Awaitable[RegistryCredentials | None]]

# (bytes so far, total or None), called as a blob downloads; must not block
BlobProgress = Callable[[int, int | None], None]


@runtime_checkable
class CredentialSource(Protocol):
    """Where a registry host's credentials come from: what ``engine_registry_credentials``
    returns (the built-in: the daemon's docker-style auth file and its credential
    helpers)."""

    name: str

    async def get(self, host: str) -> RegistryCredentials | None:
        """The credentials for ``host`` (``HOST[:PORT]``; ``docker.io`` for Docker Hub), or
        None (then the registry is used anonymously). Raises ``Unavailable`` when the source
        cannot answer (a credential helper that failed or hung)."""
        ...


class BlobTee(Protocol):
    """Receives a blob's bytes while they download, e.g. to unpack a layer on the fly.

    Each download attempt calls ``begin`` with the ingest file and how many bytes of it are
    kept (a resumed download keeps its earlier bytes; 0 means starting over), then ``data``
    with the bytes that follow (a list of pieces, about 1 MiB in all), in order, as they
    are written to that file. Bytes the tee did not get (before ``offset``, or lost to an
    interrupted attempt) are in the file. The tee must not trust the bytes before
    ``fetch_blob`` has returned: only then are they verified against the digest."""

    async def begin(self, partial: Path, offset: int) -> None: ...

    async def data(self, chunks: list[bytes]) -> None: ...


class RegistryCapability(enum.Enum):
    """Optional abilities a registry client declares in its ``capabilities``; the engine
    uses an ability only when it is declared there."""

    # ``fetch_blob`` also takes ``tee=`` and ``durable=``: see ``StreamingRegistryClient``
    BLOB_TEE = "blob-tee"


@runtime_checkable
class RegistryClient(Protocol):
    """Talks to registries: the engine's pulls, pushes and logins go through it.

    The engine picks, for each registry host, the first registered client whose
    ``handles(host)`` is true (the built-in ``distribution`` client handles every host and
    is tried last). References are ``engine.reference.Reference``; ``content`` is the
    daemon's ``engine.images.content.ContentStore``. Errors are the engine's own:
    ``NotFound``, ``PermissionDenied`` (refused credentials), ``DigestMismatch``,
    ``ResourceExhausted`` (over a size cap), ``Unavailable`` (network; its
    ``details["transient"]`` says whether retrying may help)."""

    name: str
    capabilities: frozenset[RegistryCapability]

    def handles(self, host: str) -> bool:
        """Whether this client serves registry ``host`` (``HOST[:PORT]``)."""
        ...

    def reconfigure(self, config: dict[str, Any]) -> None:
        """Apply a reloaded daemon configuration (SIGHUP) to the next requests:
        ``insecure-registries``, ``registry-mirrors``, ``max_concurrent_downloads``.
        Raises ``InvalidArgument`` for a value it cannot use, and then keeps the settings
        it had."""
        ...

    async def get_manifest(self, ref: Reference) -> tuple[bytes, str, str]:
        """The manifest or index ``ref`` names: (bytes, media type, digest), verified
        against ``ref.digest`` when it has one."""
        ...

    async def fetch_blob(
        self,
        ref: Reference,
        digest: str,
        size: int | None,
        content: ContentStore,
        *,
        progress: BlobProgress | None = None,
    ) -> Path:
        """Download blob ``digest`` of ``ref``'s repository into ``content`` (committed
        only once it matched its digest and ``size``) and return its path there; a blob
        already in ``content`` is not fetched."""
        ...

    async def blob_exists(self, ref: Reference, digest: str) -> bool:
        """Whether ``ref``'s repository holds blob ``digest``."""
        ...

    async def push_blob(
        self,
        ref: Reference,
        digest: str,
        size: int,
        content: ContentStore,
        *,
        mount_from: list[str] | None = None,
    ) -> str:
        """Make blob ``digest`` (read from ``content``) exist in ``ref``'s repository;
        ``mount_from`` names other repositories of the registry that may hold it. Returns
        how: ``"exists"``, ``"mounted"`` or ``"uploaded"``."""
        ...

    async def push_manifest(self, ref: Reference, data: bytes, media_type: str) -> str:
        """Upload ``data`` byte for byte under ``ref``'s tag; returns its digest."""
        ...

    async def check_login(self, host: str, username: str, password: str) -> None:
        """Check credentials against ``host`` before ``engctl login`` stores them; raises
        ``PermissionDenied`` when the registry refuses them."""
        ...

    def forget_credentials(self, host: str) -> None:
        """Drop whatever auth is cached for ``host``: its stored credentials changed
        (``engctl login``/``logout``)."""
        ...


class StreamingRegistryClient(RegistryClient, Protocol):
    """A client declaring ``RegistryCapability.BLOB_TEE``: ``fetch_blob`` hands the bytes
    to ``tee`` as they arrive (a pull unpacks a layer while it downloads), and with
    ``durable=False`` skips the blob's fsync (the pull makes the blobs durable later)."""

    async def fetch_blob(
        self,
        ref: Reference,
        digest: str,
        size: int | None,
        content: ContentStore,
        *,
        progress: BlobProgress | None = None,
        tee: BlobTee | None = None,
        durable: bool = True,
    ) -> Path: ...


def streaming_client(client: RegistryClient) -> StreamingRegistryClient | None:
    """``client`` as a ``StreamingRegistryClient`` when it declares ``BLOB_TEE``."""
    if RegistryCapability.BLOB_TEE in client.capabilities:
        return cast(StreamingRegistryClient, client)
    return None


def _missing_members(obj: object, protocol: type) -> list[str]:
    """The members of ``protocol`` that ``obj`` lacks (for a clear registration error)."""
    names = {n for n in vars(protocol) if not n.startswith("_")}
    names |= set(vars(protocol).get("__annotations__", {}))
    return sorted(n for n in names if not hasattr(obj, n))


# --- registration --------------------------------------------------------------------------


@attrs.define
class Register:
    """Handed to the ``engine_add_*`` hooks; collects what plugins offer (tox pattern)."""

    runtimes: dict[str, Runtime] = attrs.field(factory=dict)
    storage_drivers: dict[str, StorageDriver] = attrs.field(factory=dict)
    registry_clients: list[RegistryClient] = attrs.field(factory=list)
    volume_drivers: dict[str, VolumeDriver] = attrs.field(factory=dict)
    owners: dict[str, str] = attrs.field(factory=dict)  # "runtime:runc" -> plugin name
    current_plugin: str = ""

    def runtime(self, runtime: Runtime) -> None:
        self._require_complete("runtime", runtime, Runtime)
        self._claim("runtime", runtime.name)
        self.runtimes[runtime.name] = runtime

    def storage_driver(self, driver: StorageDriver) -> None:
        self._require_complete("storage driver", driver, StorageDriver)
        self._claim("storage", driver.name)
        self.storage_drivers[driver.name] = driver

    def volume_driver(self, driver: VolumeDriver) -> None:
        from engine.errors import InvalidArgument

        missing = _missing_members(driver, VolumeDriver)
        if missing:
            raise InvalidArgument(
                f"volume driver {type(driver).__name__} of plugin {self.current_plugin!r} "
                f"does not implement engine.plugin.VolumeDriver: it lacks {', '.join(missing)}"
            )
        self._claim("volume", driver.name)
        self.volume_drivers[driver.name] = driver

    def registry_client(self, client: RegistryClient) -> None:
        """Clients are asked ``handles(host)`` in the order they were registered."""
        self._require_complete("registry client", client, RegistryClient)
        self._claim("registry", client.name)
        self.registry_clients.append(client)

    def registry_client_for(self, host: str) -> RegistryClient:
        """The client for registry ``host``: the first registered one whose
        ``handles(host)`` is true. Raises ``Unavailable`` when none does."""
        from engine.errors import Unavailable

        for client in self.registry_clients:
            if client.handles(host):
                return client
        if not self.registry_clients:
            raise Unavailable("no registry client plugin is loaded; `engctl info` shows why")
        names = ", ".join(c.name for c in self.registry_clients)
        raise Unavailable(
            f"no registry client plugin handles {host} (loaded: {names}); install or enable "
            "a plugin for it (`engctl info` lists the plugins and why one failed)"
        )

    def _require_complete(self, kind: str, obj: object, protocol: type) -> None:
        """Every method the engine calls is there, or the plugin fails now, by name."""
        from engine.errors import InvalidArgument

        missing = _missing_members(obj, protocol)
        if missing:
            raise InvalidArgument(
                f"{kind} {type(obj).__name__} of plugin {self.current_plugin!r} does not "
                f"implement engine.plugin.{protocol.__name__}: it lacks {', '.join(missing)}"
            )

    def _claim(self, kind: str, name: str) -> None:
        from engine.errors import AlreadyExists

        key = f"{kind}:{name}"
        if key in self.owners:
            raise AlreadyExists(
                f"{kind} {name!r} is registered twice (by {self.owners[key]!r} and "
                f"{self.current_plugin!r}); disable one with ENGINE_DISABLED_PLUGINS"
            )
        self.owners[key] = self.current_plugin
