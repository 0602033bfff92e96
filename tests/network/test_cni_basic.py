"""Attaching a namespace to a bridge network with the real CNI plugins."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import pytest
import trio

from engine.actors.model import PortMapping
from engine.errors import Conflict, InvalidArgument, NotFound, RuntimeFailure
from engine.network import cni, netns
from engine.network.ports import parse_publish

from .conftest import Background, NetEnv, curl, in_netns, serve_http, wait_for_http


async def test_attach_gives_address_lo_and_eth0(env: NetEnv) -> None:
    net = await env.store.create("front")
    ns = await env.netns("c1")
    res = await cni.attach(env.store, net, "c1", ns)
    assert ipaddress.ip_address(res.ip) in ipaddress.ip_network(net.subnet)
    assert res.gateway == net.gateway and res.prefix_len == 24
    assert res.mac and res.bridge == net.bridge
    links = json.loads((await in_netns(ns, "ip", "-j", "addr")).stdout)
    by_name = {link["ifname"]: link for link in links}
    assert "UP" in by_name["lo"]["flags"]
    assert by_name["eth0"]["address"] == res.mac
    assert [a["local"] for a in by_name["eth0"]["addr_info"] if a["family"] == "inet"] == [res.ip]
    route = (await in_netns(ns, "ip", "-4", "route", "show", "default")).stdout.decode()
    assert f"via {net.gateway}" in route
    # The lease is on disk where the store says, and goes with DEL.
    lease = env.store.ipam_dir / net.name / res.ip
    assert lease.read_text().startswith("c1")
    with pytest.raises(Conflict):
        await env.store.remove("front")
    await cni.detach(env.store, net, "c1")
    await cni.detach(env.store, net, "c1")  # idempotent
    assert not lease.exists()
    await netns.delete(env.netns_dir, "c1")
    await env.store.remove("front")


async def test_published_tcp_port_answers_on_loopback_and_host_address(
    env: NetEnv, background: Background, tmp_path: Path
) -> None:
    net = await env.store.create("web")
    ns = await env.netns("web1")
    mapping = parse_publish("127.0.0.1::80")[0]
    every = parse_publish("80")[0]
    res = await cni.attach(env.store, net, "web1", ns, port_mappings=[mapping, every])
    await serve_http(background, ns, tmp_path / "www", "hello from the namespace\n")
    assert await wait_for_http(f"http://{res.ip}/") == "hello from the namespace\n"
    assert await wait_for_http(f"http://127.0.0.1:{mapping.host_port}/") == "hello from the namespace\n"
    assert await wait_for_http(f"http://127.0.0.1:{every.host_port}/") == "hello from the namespace\n"
    await cni.detach(env.store, net, "web1")
    assert await curl(f"http://127.0.0.1:{mapping.host_port}/", seconds=1) is None


UDP_ECHO = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 5353))
while True:
    data, peer = s.recvfrom(2048)
    s.sendto(b"echo:" + data, peer)
"""


def _udp_roundtrip(port: int) -> bytes | None:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.3)
        for _ in range(20):  # the server may not be bound yet
            s.sendto(b"ping", ("127.0.0.1", port))
            try:
                return s.recvfrom(2048)[0]
            except TimeoutError:
                continue
    return None


async def test_published_udp_port(env: NetEnv, background: Background) -> None:
    net = await env.store.create("udpnet")
    ns = await env.netns("dns1")
    mapping = parse_publish("127.0.0.1::5353/udp")[0]
    assert mapping.protocol == "udp"
    await cni.attach(env.store, net, "dns1", ns, port_mappings=[mapping])
    await background.start(["nsenter", f"--net={ns}", "python3", "-c", UDP_ECHO])
    assert await trio.to_thread.run_sync(_udp_roundtrip, mapping.host_port) == b"echo:ping"


async def test_plugin_error_becomes_engine_error(env: NetEnv) -> None:
    net = await env.store.create("bad")
    ns = await env.netns("bad1")
    # A port mapping the portmap plugin refuses (protocol it does not know) fails ADD...
    with pytest.raises((InvalidArgument, RuntimeFailure)) as info:
        await cni.attach(env.store, net, "bad1", ns, port_mappings=[PortMapping(8080, 80, "icmp")])
    assert "portmap" in str(info.value) and "icmp" in str(info.value), str(info.value)
    # ...and nothing of the half-done ADD stays: no record, no lease, no bridge.
    assert await cni.attachments(env.store) == []
    assert not any(p.name[0].isdigit() for p in (env.store.ipam_dir / "bad").glob("*"))
    assert (await in_netns(ns, "ip", "link", "show", "eth0", check=False)).returncode != 0


async def test_missing_plugin_directory_is_clear(env: NetEnv, tmp_path: Path) -> None:
    net = await env.store.create("nop")
    ns = await env.netns("nop1")
    with pytest.raises(InvalidArgument, match="not found in"):
        await cni.attach(env.store, net, "nop1", ns, plugin_dir=tmp_path / "nothing")


async def test_default_network_and_refusals(env: NetEnv) -> None:
    default = await env.store.get("bridge")
    ns = await env.netns("dflt0001")
    res = await cni.attach(env.store, default, "dflt0001", ns)
    settings = env.store.settings
    assert ipaddress.ip_address(res.ip) in settings.bip.network and res.bridge == settings.bridge
    assert default.subnet == settings.subnet and res.gateway == settings.gateway
    with pytest.raises(InvalidArgument, match="already"):
        await cni.attach(env.store, default, "dflt0001", ns)
    with pytest.raises(InvalidArgument, match="not attachable"):
        await cni.attach(env.store, await env.store.get("none"), "dflt0001", ns)
    with pytest.raises(NotFound, match="does not exist"):
        await cni.attach(env.store, default, "ghost", env.netns_dir / "ghost")
    await cni.detach_all(env.store, "dflt0001")
    assert await cni.attachments(env.store) == []
    assert (await in_netns(ns, "ip", "link", "show", "eth0", check=False)).returncode != 0


async def test_none_network_gets_loopback_only(env: NetEnv) -> None:
    ns = await env.netns("none0001")
    await cni.setup_loopback(ns)
    links = (await in_netns(ns, "ip", "-o", "link")).stdout.decode().splitlines()
    assert len(links) == 1 and "lo:" in links[0] and "UP" in links[0]
