"""Two daemons on one host, each with its own bridge, subnet, pool and isolation chains: both
publish ports at once, and one's containers going (and the daemon itself) leaves the other's
bridge, chains and ports working.

The first daemon gets its settings as flags (--bridge/--bip/--default-address-pool, from
its NetSlot), the second from daemon.json (bridge/bip/default-address-pools)."""

from __future__ import annotations

import ipaddress
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.network.ports import free_port
from engine.testing.daemon import Daemon, claim_net_slot

from .conftest import start_engine, stop_engine
from .e2e_net_helpers import HTTPD, host_links, run_attached, run_d, wait_http

LOCAL_DNS = ["127.0.0.1"]  # names resolve through /etc/hosts only


def _forward_jumps() -> list[str]:
    rules = subprocess.run(["iptables", "-w", "5", "-S", "FORWARD"], capture_output=True,
                           check=True, timeout=30).stdout.decode().splitlines()
    return [r.split(" -j ", 1)[1].split()[0] for r in rules if " -j " in r]


def _chain(name: str) -> str | None:
    proc = subprocess.run(["iptables", "-w", "5", "-S", name], capture_output=True, timeout=30)
    return proc.stdout.decode() if proc.returncode == 0 else None


@pytest.fixture
def two_engines(busybox_archive: Path, host_guard: None) -> Iterator[tuple[Daemon, Daemon]]:
    first = start_engine(busybox_archive, "runc")
    slot = claim_net_slot()
    try:
        second = start_engine(busybox_archive, "runc", config={
            "bridge": slot.bridge, "bip": f"{slot.gateway}/24",
            "default-address-pools": [{"base": slot.pool, "size": 24}],
        })
        try:
            yield first, second
        finally:
            stop_engine(second)
    finally:
        stop_engine(first)
        slot.release()


def _serve(d: Daemon, network: str, text: str) -> tuple[str, int]:
    port = free_port()
    cid = run_d(d, network=network, publish=[f"{port}:80"],
                cmd=["sh", "-c", HTTPD.format(text=text, port=80)])
    return cid, port


def _ip(d: Daemon, cid: str, network: str) -> str:
    return str(d.call("container.inspect", id=cid)["NetworkSettings"]["Networks"][network]["IPAddress"])


def _reaches(d: Daemon, network: str, ip: str) -> bool:
    """Whether a container on ``network`` of ``d`` gets an answer from ip:80 (nc, not wget)."""
    code, out = run_attached(d, network=network, dns=LOCAL_DNS, cmd=[
        "sh", "-c", f"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 2 {ip} 80"])
    return code == 0 and "200 OK" in out


def test_two_daemons_publish_side_by_side_and_one_going_leaves_the_other_working(
    two_engines: tuple[Daemon, Daemon],
) -> None:
    a, b = two_engines
    settings = {d: d.network_settings() for d in (a, b)}
    assert settings[a].bridge != settings[b].bridge
    assert not settings[a].bip.network.overlaps(settings[b].bip.network)
    assert b.config is not None and settings[b].bridge == b.config["bridge"]  # from daemon.json

    served: dict[Daemon, list[tuple[str, int, str]]] = {a: [], b: []}
    for d, tag in ((a, "a"), (b, "b")):
        d.call("network.create", name="e2epair")
        user = next(n for n in d.call("network.list") if n["Name"] == "e2epair")
        subnet = ipaddress.ip_network(user["IPAM"]["Config"][0]["Subnet"])
        # User networks' subnets come from the daemon's own pool, not the default network's.
        assert subnet.subnet_of(settings[d].pools[0].base), subnet
        assert not subnet.overlaps(settings[d].bip.network)
        for network in ("bridge", "e2epair"):
            cid, port = _serve(d, network, f"{tag}-{network}")
            served[d].append((cid, port, f"{tag}-{network}\n"))
    for d in (a, b):
        for _cid, port, text in served[d]:
            assert wait_http(f"http://127.0.0.1:{port}/") == text
        default_ip = _ip(d, served[d][0][0], "bridge")
        assert ipaddress.ip_address(default_ip) in settings[d].bip.network
        assert settings[d].bridge in host_links()
        # Each daemon's chains exist, name its bridges and are hooked from FORWARD.
        chain_1 = _chain(settings[d].chains[0])
        assert chain_1 is not None and settings[d].bridge in chain_1
        assert settings[d].chains[0] in _forward_jumps()
    # Both jumps come before the firewall plugin's ACCEPTs.
    jumps = _forward_jumps()
    assert max(jumps.index(settings[d].chains[0]) for d in (a, b)) < jumps.index("CNI-FORWARD")

    # Daemon a's containers go: its bridges and chains go with them ...
    for cid, _, _ in served[a]:
        a.call("container.remove", id=cid, force=True)
    assert settings[a].bridge not in host_links()
    assert _chain(settings[a].chains[0]) is None and settings[a].chains[0] not in _forward_jumps()
    # ... and b's stay whole: its ports answer, its chains still isolate its networks.
    for _cid, port, text in served[b]:
        assert wait_http(f"http://127.0.0.1:{port}/", seconds=5) == text
    assert settings[b].bridge in host_links()
    chain_1 = _chain(settings[b].chains[0])
    assert chain_1 is not None and settings[b].bridge in chain_1
    assert settings[b].chains[0] in _forward_jumps()
    b_default_ip = _ip(b, served[b][0][0], "bridge")
    assert not _reaches(b, "e2epair", b_default_ip)  # another network of b: dropped
    assert _reaches(b, "bridge", b_default_ip)  # the same network: answered

    # a itself stops (and starts again): still nothing of b is touched.
    a.stop()
    a.start()
    for _cid, port, text in served[b]:
        assert wait_http(f"http://127.0.0.1:{port}/", seconds=5) == text
    # a serves again beside b, on its own bridge.
    _, port = _serve(a, "bridge", "a-again")
    assert wait_http(f"http://127.0.0.1:{port}/") == "a-again\n"
    assert wait_http(f"http://127.0.0.1:{served[b][0][1]}/") == served[b][0][2]


def test_a_second_daemon_on_the_same_bridge_is_refused(
    busybox_archive: Path, host_guard: None
) -> None:
    a = start_engine(busybox_archive, "runc")
    try:
        second = Daemon(extra_args=["--bridge", a.net.bridge, "--bip", "10.127.254.1/24",
                                    "--default-network", "none"])
        try:
            with pytest.raises(RuntimeError, match="in use by another engine daemon"):
                second.start()
            assert second.proc is not None and second.proc.returncode == 1
        finally:
            second.cleanup()
        # The first one is unharmed.
        _, port = _serve(a, "bridge", "still-a")
        assert wait_http(f"http://127.0.0.1:{port}/") == "still-a\n"
    finally:
        stop_engine(a)
