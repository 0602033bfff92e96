"""Fixtures for the network tests: real CNI plugins, bridges, namespaces and iptables.

A missing requirement (root, a binary, a CNI plugin) skips locally but fails under CI
(env CI=true). For the whole session an egress guard drops forwarded traffic towards the
host's uplink, and ip_forward (which the CNI bridge plugin turns on) is restored at the end.
Every namespace, attachment, bridge and process a test makes is removed in a finally block.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import attrs
import pytest
import trio

from engine.network import isolation, netns
from engine.network.networks import NetworkStore, delete_bridge
from engine.network.reconcile import reconcile
from engine.store.layout import Layout
from engine.testing.daemon import claim_net_slot, require, require_binary
from engine.testing.egress import egress_guard, uplink  # noqa: F401 - test modules import uplink from here

CNI_DIR = Path("/usr/lib/cni")


def require_root_networking() -> None:
    require(os.geteuid() == 0, "needs root (namespaces, bridges, iptables)")
    for tool in ("ip", "iptables", "unshare", "nsenter", "curl", "busybox"):
        require_binary(tool)
    for plugin in ("bridge", "host-local", "portmap", "firewall", "loopback"):
        require((CNI_DIR / plugin).exists(), f"needs CNI plugin {plugin} (apt-get install containernetworking-plugins)")


@pytest.fixture(scope="session")
def host_guard() -> Iterator[None]:
    """Egress guard + ip_forward restore, installed once for every test that needs root."""
    require_root_networking()
    with egress_guard():
        yield


@attrs.frozen
class NetEnv:
    layout: Layout
    store: NetworkStore

    @property
    def netns_dir(self) -> Path:
        return self.layout.netns_dir

    async def netns(self, name: str) -> Path:
        return await netns.create(self.netns_dir, name)


@pytest.fixture
async def env(tmp_path: Path, host_guard: None) -> AsyncIterator[NetEnv]:
    layout = Layout(tmp_path / "root", tmp_path / "run")
    layout.ensure()
    # A bridge, subnet and pool of the test's own: it runs beside daemons and other tests.
    slot = claim_net_slot()
    store = NetworkStore(layout.networks_dir, slot.settings())
    try:
        yield NetEnv(layout, store)
    finally:
        with trio.CancelScope(shield=True):
            # Everything the test left: attachments (CNI DEL), namespaces, leases, bridges.
            await reconcile(store, layout.netns_dir, keep=())
            for net in await store.list():
                if not net.is_pseudo:
                    await delete_bridge(net)
            await isolation.remove(store.settings.chains)
            await netns.release_dir(layout.netns_dir)
            slot.release()


class Background:
    """Processes started in namespaces by a test; all killed and reaped at the end."""

    def __init__(self) -> None:
        self.procs: list[trio.Process] = []

    async def start(self, argv: list[str]) -> trio.Process:
        proc = await trio.lowlevel.open_process(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.procs.append(proc)
        return proc

    async def stop_all(self) -> None:
        for proc in self.procs:
            if proc.returncode is None:
                proc.kill()
            with trio.move_on_after(5):
                await proc.wait()


@pytest.fixture
async def background() -> AsyncIterator[Background]:
    bg = Background()
    try:
        yield bg
    finally:
        with trio.CancelScope(shield=True):
            await bg.stop_all()


async def sh(*argv: str, check: bool = True, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    with trio.fail_after(20):
        return await trio.run_process(list(argv), capture_stdout=True, capture_stderr=True, check=check, stdin=stdin)


async def in_netns(path: Path, *argv: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
    return await sh("nsenter", f"--net={path}", *argv, check=check)


async def curl(url: str, *, netns_path: Path | None = None, seconds: int = 3) -> str | None:
    """The body at ``url``, or None when it cannot be fetched."""
    argv = ["curl", "-sS", "--noproxy", "*", "--max-time", str(seconds), url]
    if netns_path is not None:
        argv = ["nsenter", f"--net={netns_path}", *argv]
    proc = await sh(*argv, check=False)
    return proc.stdout.decode() if proc.returncode == 0 else None


async def wait_for_http(url: str, *, netns_path: Path | None = None, seconds: float = 10) -> str:
    with trio.fail_after(seconds):
        while True:
            body = await curl(url, netns_path=netns_path, seconds=1)
            if body is not None:
                return body
            await trio.sleep(0.1)


async def serve_http(bg: Background, ns: Path | None, docroot: Path, text: str, port: int = 80) -> None:
    """busybox httpd inside the namespace (None: the host's), serving ``text`` as index.html."""
    def _write() -> None:
        docroot.mkdir(parents=True, exist_ok=True)
        (docroot / "index.html").write_text(text)

    await trio.to_thread.run_sync(_write)
    enter = ["nsenter", f"--net={ns}"] if ns is not None else []
    await bg.start([*enter, "busybox", "httpd", "-f", "-p", str(port), "-h", str(docroot)])
