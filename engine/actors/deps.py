"""What a container actor needs from the rest of the daemon, as narrow typed protocols.

The actor knows nothing of the daemon, the RPC or the API: the supervisor builds one
``ActorDeps`` and hands it to every actor. Tests build their own (a fault the real parts
cannot show, such as a bug that raises inside a command, is injected here).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import attrs

from engine.actors.events import Event
from engine.actors.model import ContainerConfig, ContainerStatus
from engine.plugin import Runtime

if TYPE_CHECKING:
    from engine.actors.container import ContainerActor


class RuntimeProvider(Protocol):
    def usable(self, name: str) -> Runtime:
        """The runtime, or an error saying why it cannot run containers here."""
        ...

    def installed(self, name: str) -> Runtime | None:
        """The runtime even if unusable now (to clean up after it), None if not installed."""
        ...


class RootfsProvider(Protocol):
    async def mount(self, container_id: str, layers: list[str]) -> Path: ...

    async def unmount(self, container_id: str) -> None:
        """Idempotent; failures are the caller's to log."""
        ...

    async def remove(self, container_id: str) -> None:
        """Remove the container's writable layer (unmounting it first)."""
        ...


class NetworkProvider(Protocol):
    """Container networking. ``setup`` and ``teardown`` change only the network part of the
    status object they are given (the actor's own, under its mailbox)."""

    async def setup(self, config: ContainerConfig, status: ContainerStatus) -> None: ...

    async def teardown(self, config: ContainerConfig, status: ContainerStatus) -> None: ...

    async def connect(self, config: ContainerConfig, status: ContainerStatus, network: str,
                      aliases: list[str], *, running: bool, ipv4_address: str = "") -> dict[str, Any] | None:
        """Record the membership (with the address asked for, ``--ip``) and, when
        ``running``, attach now; the new network details (None when not running)."""
        ...

    async def disconnect(self, config: ContainerConfig, status: ContainerStatus, network: str,
                         *, force: bool, running: bool) -> dict[str, Any] | None:
        """Forget the membership and, when ``running``, detach now; the new details."""
        ...


class VolumeProvider(Protocol):
    """The container's volumes (``config.volumes``): mounted by their drivers when a run
    starts (a new, empty volume seeded from the image's content at its path), released
    when it ends."""

    async def mount(self, config: ContainerConfig, rootfs: Path, *, holder: str = "") -> list[dict[str, Any]]:
        """Mount them all; the host directories to bind (``source``, ``destination``,
        ``read_only``), which the bundle reads from ``status.volume_mounts``. ``holder``:
        a use other than the container's run (a copy), counted under that name."""
        ...

    async def unmount(self, config: ContainerConfig, *, holder: str = "") -> None:
        """This container (or ``holder``) no longer needs them (each is unmounted when
        nobody does). Idempotent."""
        ...

    async def remove_anonymous(self, config: ContainerConfig) -> None:
        """``rm -v`` and ``--rm``: remove the anonymous volumes made for this container."""
        ...


class BundleBuilder(Protocol):
    async def write_bundle(self, config: ContainerConfig, status: ContainerStatus, rootfs: Path,
                           bundle_dir: Path, runtime: Runtime) -> None: ...

    async def exec_process(self, config: ContainerConfig, status: ContainerStatus, rootfs: Path,
                           cmd: list[str], *, env: list[str], workdir: str, user: str,
                           ) -> dict[str, Any]: ...


class Registry(Protocol):
    """The supervisor's name registry, told when a container is gone for everyone."""

    def forget(self, actor: ContainerActor) -> None: ...


@attrs.frozen
class ActorSettings:
    log_driver: str = "k8s-file"  # the daemon's default --log-driver
    log_opts: dict[str, str] = attrs.field(factory=dict)  # the daemon's default --log-opt
    runtime_timeout: float = 120.0  # bound on one runtime call (create, kill, delete...)
    cleanup_timeout: float = 60.0  # bound on each shielded cleanup step
    kill_wait: float = 10.0  # after SIGKILL, how long an exit may take before it is stuck
    attached_readers_wait: float = 10.0  # a removed container's files wait for its readers


@attrs.frozen
class ActorDeps:
    runtimes: RuntimeProvider
    rootfs: RootfsProvider
    bundles: BundleBuilder
    publish: Callable[[Event], None]
    registry: Registry
    container_dir: Callable[[str], Path]
    run_dir: Callable[[str], Path]
    network: NetworkProvider | None = None
    volumes: VolumeProvider | None = None
    settings: ActorSettings = ActorSettings()
