"""engined: the daemon's entry point and its lifetime.

Start-up: parse flags + config → lock the root (a second daemon on it is refused) → load
plugins → bring up subsystems (they reconcile what is on disk) → listen. SIGTERM/SIGINT stop
serving and detach from containers, which keep running (live-restore); SIGHUP reloads the
reloadable keys of the config file.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import grp
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

import trio

from engine.actors.deps import ActorDeps, ActorSettings, Registry
from engine.errgroup import engine_errors
from engine.errors import ConfigError, EngineError, Unavailable
from engine.oci.exec import leave_sessions_running
from engine.pluginmanager import load_plugins
from engine.rpc.methods import MethodTable
from engine.rpc.server import RPCServer
from engine.rpc.transports import (
    TLSConfig,
    inherited_listeners,
    open_tcp_listeners,
    parse_host,
    serve_stream_listeners,
    serve_websocket_rpc,
    unix_listener,
)
from engine.store.layout import Layout
from engine.supervisor.app import App
from engine.supervisor.config import (
    RELOADABLE,
    DaemonConfig,
    build_config,
    config_from_args,
    load_config_file,
)
from engine.supervisor.logs import set_level, setup_logging

log = logging.getLogger("engine.daemon")

async def start_subsystems(app: App, nursery: trio.Nursery) -> None:
    """Bring up images, networking and containers, in that order, then reconcile what is
    on disk (``engine.supervisor.reconcile``) before anything is served."""
    from engine.network.service import ContainerNetworking
    from engine.supervisor.containers import ContainerSupervisor
    from engine.supervisor.logrotate import LogRotator
    from engine.supervisor.reconcile import reconcile_at_start

    app.availability.start(nursery)
    await app.check_plugins()
    await open_image_store(app, nursery)
    app.services.network = ContainerNetworking(app.layout, app.services.require_containers)
    app.services.network.events = app.events  # docker's network connect/disconnect events
    await app.services.network.use_settings(app.config.network_settings())
    await app.services.network.start_dns(nursery, Path(app.config.resolv_conf))
    app.services.volumes = await open_volumes(app)
    supervisor = ContainerSupervisor(app.layout.containers_dir, functools.partial(actor_deps, app))
    await nursery.start(supervisor.run)
    app.services.containers = supervisor
    # before adoption: the exits it records are rotation points
    rotator = LogRotator(app)
    await nursery.start(rotator.run)
    await reconcile_at_start(app, supervisor)
    await rotator.watch_running()


def actor_deps(app: App, registry: Registry) -> ActorDeps:
    """What every container actor gets: the daemon's parts behind narrow protocols."""
    from engine.supervisor.app import RootfsAccess
    from engine.supervisor.bundle import Bundles

    return ActorDeps(
        runtimes=app,
        rootfs=RootfsAccess(app),
        bundles=Bundles(),
        publish=app.events.publish,
        registry=registry,
        container_dir=app.layout.container_dir,
        run_dir=app.layout.run_container_dir,
        network=app.services.network,
        volumes=app.services.volumes,
        settings=ActorSettings(
            log_driver=app.config.log_driver,
            log_opts=dict(app.config.log_opts),
            runtime_timeout=app.config.runtime_timeout,
            cleanup_timeout=app.config.runtime_timeout,
        ),
    )


async def open_volumes(app: App) -> Any:
    """The volume store (records read in a thread) and its service."""
    from engine.supervisor.volumes import VolumeService
    from engine.volumes.store import VolumeStore

    def publish(action: str, record: Any, **attributes: Any) -> None:
        app.events.emit("volume", action, record.name, driver=record.driver, **attributes)

    store = VolumeStore(app.layout.volumes_dir, lambda: app.plugins.register.volume_drivers, publish)
    await trio.to_thread.run_sync(store.load)
    for name, why in store.broken.items():
        log.error("volume %s is broken (%s); `engctl system check --repair` removes it", name, why)
    return VolumeService(store, app.services.require_containers)


async def open_image_store(app: App, nursery: trio.Nursery) -> None:
    """The image store over the storage driver; unavailable (with the reason) without one."""
    # the build cache keeps its step images out of `images` and `image prune` from the
    # store's first listing on, whether or not this daemon builds (engine.build.cache)
    import engine.build.cache  # noqa: F401
    from engine.images.content import ContentStore
    from engine.images.store import ImageStore

    try:
        storage = app.storage()
    except EngineError as e:
        log.error("images are unavailable: %s", e)
        app.services.images_error = str(e)
        return
    layout = app.layout

    def open_store() -> ImageStore:
        return ImageStore(layout, ContentStore(layout.blobs_dir, layout.ingest_dir), storage)

    store = await trio.to_thread.run_sync(open_store)
    store.writeback.attach(nursery)
    app.services.images = store


class RootLock:
    """An flock on ``<root>/engine.lock``: one daemon per root."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise Unavailable(
                    f"another engined (pid {holder}) is already using root {self.path.parent}; "
                    "stop it first, or give this one its own --root and --run-root"
                ) from None
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def build_methods() -> MethodTable:
    from engine.api import register_all

    table = MethodTable()
    register_all(table)
    return table


async def _listen(app: App, server: RPCServer, nursery: trio.Nursery) -> list[Path]:
    """Open every --host; returns the unix socket paths to remove at shutdown."""
    hosts = app.config.hosts or [f"unix://{app.layout.default_socket}"]
    sockets: list[Path] = []
    gid = grp.getgrnam(app.config.socket_group).gr_gid if app.config.socket_group else None
    for host in hosts:
        kind, address = parse_host(host)
        if kind == "unix":
            listener = await unix_listener(Path(address), gid=gid)
            sockets.append(Path(address))
            await nursery.start(serve_stream_listeners, server, [listener])
        elif kind == "fd":
            listeners = inherited_listeners()
            if not listeners:
                raise ConfigError("fd:// given but no sockets were passed (LISTEN_FDS is unset)")
            await nursery.start(serve_stream_listeners, server, listeners)
        else:
            tls = None
            if app.config.tls_cert and app.config.tls_key:
                tls = TLSConfig(
                    Path(app.config.tls_cert),
                    Path(app.config.tls_key),
                    Path(app.config.tls_ca) if app.config.tls_ca else None,
                )
            # Plain only on loopback: checked on the bound sockets, whatever the name says.
            tcp = await open_tcp_listeners(address, loopback_only=tls is None)
            await nursery.start(
                serve_websocket_rpc, server, tcp, tls, lambda: app.config.ws_allowed_origins
            )
        app.listeners.append(host)
        log.info("listening", extra={"host": host})
    return sockets


async def _listen_docker(app: App, nursery: trio.Nursery) -> list[Path]:
    """The Docker Engine API front door, when --docker-host (docker-hosts) asks for it."""
    if not app.config.docker_hosts:
        return []
    from engine.dockerapi.server import DockerAPI, listen

    gid = grp.getgrnam(app.config.socket_group).gr_gid if app.config.socket_group else None
    rpc_uses_fd = any(parse_host(h)[0] == "fd" for h in app.config.hosts)
    sockets = await listen(app, DockerAPI(app), app.config.docker_hosts, nursery, gid=gid,
                           rpc_uses_fd=rpc_uses_fd)
    app.listeners.extend(f"docker+{host}" for host in app.config.docker_hosts)
    return sockets


async def _listen_cri(app: App, nursery: trio.Nursery) -> list[Path]:
    """The Kubernetes CRI (engine.cri), when --cri-socket (cri-socket) asks for it."""
    if not app.config.cri_socket:
        return []
    from engine.cri.server import serve_cri
    from engine.cri.streaming.server import StreamingServer

    # the streaming server first: the CRI's Exec/Attach/PortForward hand out its URLs
    streaming = StreamingServer(app)
    await nursery.start(functools.partial(streaming.serve, app.config.cri_streaming_address))
    app.listeners.append(f"cri-streaming+{streaming.base_url}")
    path = await nursery.start(functools.partial(serve_cri, app, app.config.cri_socket, streaming=streaming))
    app.listeners.append(f"cri+unix://{path}")
    return [path]


async def reload_config(app: App) -> None:
    """SIGHUP: re-read the file (in a worker thread); apply what can change at run time,
    report the rest."""
    def read() -> DaemonConfig:
        fields = load_config_file(app.config_path, required=True) if app.config_path else {}
        return build_config(fields, app.services.flags, str(app.config_path or "flags"))

    try:
        new = await trio.to_thread.run_sync(read)
    except ConfigError as e:
        log.error("reload failed, keeping the running configuration: %s", e)
        return
    changed = []
    for name in RELOADABLE:
        if getattr(new, name) != getattr(app.config, name):
            setattr(app.config, name, getattr(new, name))
            changed.append(name)
    ignored = [
        n for n in ("root", "run_root", "hosts", "docker_hosts", "storage_driver", "bridge", "bip", "default_address_pools",
                    "runtime_timeout", "cri_socket", "cni_conf_dir", "cni_bin_dirs", "cri_pause_image",
                    "cri_streaming_address")
        if getattr(new, n) != getattr(app.config, n)
    ]
    set_level(app.config.log_level)
    # registry clients built their settings at start: hand them the reloaded ones, so the
    # next pull sees new insecure registries, mirrors and download limit
    plugin_config = app.config.to_plugin_dict()
    for client in app.plugins.register.registry_clients:
        try:
            client.reconfigure(plugin_config)
        except EngineError as e:
            log.error("registry client %s keeps its settings: %s", client.name, e)
    for hook in app.services.reload_hooks:
        hook(app)
    log.info("configuration reloaded", extra={"changed": ",".join(changed) or "none",
                                              "needs_restart": ",".join(ignored) or "none"})
    app.events.emit("daemon", "reload", str(os.getpid()), changed=changed, needs_restart=ignored)


async def _handle_signals(app: App, stop: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for signum in signals:
            if signum == signal.SIGHUP:
                await reload_config(app)
            else:
                log.info("shutting down", extra={"signal": signal.Signals(signum).name})
                # exec sessions run on under their conmons, as containers do (live-restore)
                leave_sessions_running()
                stop.cancel()
                return


async def run_daemon(config: DaemonConfig, config_path: Path | None, flags: dict[str, Any],
                     *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    layout = Layout(Path(config.root), Path(config.run_root))
    await trio.to_thread.run_sync(layout.ensure)
    lock = RootLock(layout.lock_file)
    lock.acquire()
    sockets: list[Path] = []
    try:
        plugins = load_plugins(config.to_plugin_dict())
        app = App(config, config_path, layout, plugins)
        app.services.flags = flags
        server = RPCServer(build_methods(), app)
        app.services.rpc = server
        with trio.CancelScope() as stop:
            async with trio.open_nursery() as nursery:
                await start_subsystems(app, nursery)
                # the Docker API first: once the RPC answers, every listener is up
                sockets = await _listen_docker(app, nursery)
                sockets += await _listen_cri(app, nursery)
                sockets += await _listen(app, server, nursery)
                await trio.to_thread.run_sync(layout.pid_file.write_text, f"{os.getpid()}\n")
                nursery.start_soon(_handle_signals, app, stop)
                app.events.emit("daemon", "start", str(os.getpid()))
                log.info("engined ready", extra={"root": str(layout.root), "pid": os.getpid()})
                task_status.started(app)
        if app.services.network is not None:
            with trio.CancelScope(shield=True), trio.move_on_after(10):
                await app.services.network.close()
    finally:
        for path in sockets:
            path.unlink(missing_ok=True)
        layout.pid_file.unlink(missing_ok=True)
        lock.release()
    log.info("engined stopped")


def main(argv: list[str] | None = None) -> None:
    try:
        config, path, flags = config_from_args(argv)
    except EngineError as e:
        print(f"engined: {e}", file=sys.stderr)
        sys.exit(1)
    setup_logging(config.log_level)
    if os.geteuid() != 0:
        log.warning("engined is not running as root: containers will not start")
    try:
        trio.run(run_daemon, config, path, flags)
    except (EngineError, BaseExceptionGroup) as e:
        errors = engine_errors(e)
        if not errors:
            raise
        for err in errors:
            log.error("%s", err)
            print(f"engined: {err}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
