"""Fixtures for the end-to-end network tests: a real engined (runc or crun, conmon, overlay,
CNI) with the busybox image loaded, under the network tests' egress guard.

Every test gets its own daemon; at the end its containers are removed, the daemon stopped,
and whatever networking is left (CNI attachments, namespaces, leases, bridges, isolation
chains) is reconciled away before the daemon's directories are deleted.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import trio

from engine.network import isolation, netns
from engine.network.networks import NetworkStore, delete_bridge
from engine.network.reconcile import reconcile
from engine.testing.daemon import Daemon, require_binary
from engine.testing.images import busybox_image, write_docker_archive


def _load_network_fixtures() -> ModuleType:
    # tests/network/conftest.py owns the egress guard; load it under its own name so this
    # directory reuses the very same session fixture instead of a copy.
    name = "network_fixtures_conftest"
    if name in sys.modules:
        return sys.modules[name]
    path = Path(__file__).resolve().parent.parent / "network" / "conftest.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


_net = _load_network_fixtures()
host_guard = _net.host_guard  # session: egress guard + ip_forward restore

RUNTIMES = ["runc", "crun"]


@pytest.fixture(scope="session")
def busybox_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("images") / "busybox.tar"
    write_docker_archive(path, [busybox_image()])
    return path


def sweep_networking(d: Daemon) -> None:
    """Undo every bit of networking the daemon's root still records (after it stopped)."""
    async def _sweep() -> None:
        store = NetworkStore(d.root / "networks", d.network_settings())
        run_netns = d.run_root / "netns"
        await reconcile(store, run_netns, keep=())
        for net in await store.list():
            await delete_bridge(net)
        await isolation.remove(store.settings.chains)
        if await trio.to_thread.run_sync(run_netns.exists):
            await netns.release_dir(run_netns)

    trio.run(_sweep)


def start_engine(busybox_archive: Path, runtime: str, base: Path | None = None,
                 config: dict[str, Any] | None = None) -> Daemon:
    """A daemon with its own bridge, subnet and pool (a NetSlot of engine.testing.daemon,
    unless ``config`` gives them)."""
    require_binary(runtime)
    require_binary("conmon")
    d = Daemon(base, extra_args=["--default-runtime", runtime], config=config)
    d.start()
    d.call("image.load", path=str(busybox_archive))
    return d


def stop_engine(d: Daemon) -> None:
    try:
        d.remove_all_containers()
        d.stop()
        sweep_networking(d)
    finally:
        d.cleanup()


@pytest.fixture(params=RUNTIMES)
def engine(request: pytest.FixtureRequest, busybox_archive: Path, host_guard: None) -> Iterator[Daemon]:
    d = start_engine(busybox_archive, request.param)
    d.runtime = request.param  # type: ignore[attr-defined]
    try:
        yield d
    finally:
        stop_engine(d)


@pytest.fixture
def runc_engine(busybox_archive: Path, host_guard: None) -> Iterator[Daemon]:
    """One runtime is enough where the runtime plays no part in what is tested."""
    d = start_engine(busybox_archive, "runc")
    try:
        yield d
    finally:
        stop_engine(d)
