"""Name resolution within a network, isolation between networks, internal networks."""

from __future__ import annotations

import json
from pathlib import Path

from engine.network import cni, etc_files, isolation, netns

from .conftest import Background, NetEnv, curl, in_netns, serve_http, sh, uplink, wait_for_http


async def _join(env: NetEnv, net_name: str, cid: str, name: str, aliases: list[str]) -> cni.AttachResult:
    net = await env.store.get(net_name)
    ns = await env.netns(cid)
    etc_dir = env.layout.run_container_dir(cid) / "etc"
    await etc_files.write_etc_files(etc_dir, hostname=cid[:12], name=name)
    res = await cni.attach(env.store, net, cid, ns, name=name, aliases=aliases, etc_dir=etc_dir)
    await etc_files.refresh_network(env.store, net)
    return res


def _hosts(env: NetEnv, cid: str) -> dict[str, str]:
    """name -> ip from the container's generated /etc/hosts."""
    found: dict[str, str] = {}
    text = (env.layout.run_container_dir(cid) / "etc" / "hosts").read_text()
    for line in text.splitlines():
        ip, *names = line.split()
        for n in names:
            found.setdefault(n, ip)
    return found


async def test_two_namespaces_on_one_network_reach_each_other_by_name(
    env: NetEnv, background: Background, tmp_path: Path
) -> None:
    await env.store.create("app")
    a = await _join(env, "app", "aaaa0001", "web", ["www"])
    hosts_file = env.layout.run_container_dir("aaaa0001") / "etc" / "hosts"
    inode = hosts_file.stat().st_ino
    b = await _join(env, "app", "bbbb0002", "db", [])
    # Both files name both containers; a's was rewritten in place (bind mounts see it).
    assert _hosts(env, "aaaa0001")["db"] == b.ip
    assert _hosts(env, "aaaa0001")["web"] == a.ip
    assert _hosts(env, "bbbb0002")["web"] == a.ip and _hosts(env, "bbbb0002")["www"] == a.ip
    assert hosts_file.stat().st_ino == inode
    ns_a, ns_b = env.netns_dir / "aaaa0001", env.netns_dir / "bbbb0002"
    await in_netns(ns_b, "busybox", "ping", "-c", "1", "-W", "2", a.ip)
    await serve_http(background, ns_a, tmp_path / "www", "a says hi\n")
    assert await wait_for_http(f"http://{a.ip}/", netns_path=ns_b) == "a says hi\n"
    # Leaving rewrites the others' files.
    await cni.detach(env.store, await env.store.get("app"), "bbbb0002")
    await etc_files.refresh_network(env.store, await env.store.get("app"))
    assert "db" not in _hosts(env, "aaaa0001")


async def test_other_network_is_isolated(env: NetEnv, background: Background, tmp_path: Path) -> None:
    await env.store.create("blue")
    await env.store.create("green")
    blue = await _join(env, "blue", "blue0001", "b1", [])
    await _join(env, "green", "gren0001", "g1", [])
    ns_blue, ns_green = env.netns_dir / "blue0001", env.netns_dir / "gren0001"
    await serve_http(background, ns_blue, tmp_path / "www", "blue\n")
    assert await wait_for_http(f"http://{blue.ip}/") == "blue\n"  # the host reaches it
    # The green namespace has a route (via its gateway) but the isolation chain drops it.
    assert await curl(f"http://{blue.ip}/", netns_path=ns_green, seconds=2) is None
    ping = await in_netns(ns_green, "busybox", "ping", "-c", "1", "-W", "1", blue.ip, check=False)
    assert ping.returncode != 0
    assert "b1" not in _hosts(env, "gren0001")
    chains = env.store.settings.chains
    rules = (await sh("iptables", "-S", chains[0])).stdout.decode()
    assert (await env.store.get("blue")).bridge in rules
    # Without our chains the host would route between the bridges: the chains are why.
    await isolation.sync(chains, [])
    try:
        assert await curl(f"http://{blue.ip}/", netns_path=ns_green, seconds=2) == "blue\n"
    finally:
        await isolation.sync(chains, [await env.store.get("blue"), await env.store.get("green")])
    assert await curl(f"http://{blue.ip}/", netns_path=ns_green, seconds=2) is None


async def _host_address() -> str:
    """The host's own uplink address (traffic to it stays on this machine)."""
    addrs = json.loads((await sh("ip", "-j", "-4", "addr", "show", "dev", uplink())).stdout)
    return str(addrs[0]["addr_info"][0]["local"])


async def test_internal_network_has_no_route_out_and_no_masquerade(
    env: NetEnv, background: Background, tmp_path: Path
) -> None:
    internal = await env.store.create("private", internal=True)
    await env.store.create("public")
    inside = await _join(env, "private", "priv0001", "p1", [])
    await _join(env, "public", "publ0001", "q1", [])
    host_ip = await _host_address()
    # A listener on the host's own address, served from the host namespace.
    await serve_http(background, None, tmp_path / "hostwww", "host\n", port=18089)
    assert await wait_for_http(f"http://{host_ip}:18089/") == "host\n"
    ns_in, ns_pub = env.netns_dir / "priv0001", env.netns_dir / "publ0001"
    # The public network routes to the host via its gateway; the internal one has no route.
    assert await curl(f"http://{host_ip}:18089/", netns_path=ns_pub) == "host\n"
    assert await curl(f"http://{host_ip}:18089/", netns_path=ns_in, seconds=2) is None
    routes = (await in_netns(ns_in, "ip", "-4", "route")).stdout.decode()
    assert "default" not in routes
    nat = (await sh("iptables-save", "-t", "nat")).stdout.decode()
    assert internal.subnet not in nat.replace(f"-d {internal.subnet}", "")
    assert inside.ip and f"{inside.ip}/32" not in nat
    # The host itself still reaches the internal container directly.
    await serve_http(background, ns_in, tmp_path / "inwww", "inside\n")
    assert await wait_for_http(f"http://{inside.ip}/") == "inside\n"


async def test_isolation_chain_goes_with_last_network(env: NetEnv) -> None:
    net = await env.store.create("solo")
    ns = await env.netns("solo0001")
    chain_1 = env.store.settings.chains[0]
    await cni.attach(env.store, net, "solo0001", ns)
    assert (await sh("iptables", "-S", chain_1, check=False)).returncode == 0
    await cni.detach(env.store, net, "solo0001")
    await netns.delete(env.netns_dir, "solo0001")
    assert (await sh("iptables", "-S", chain_1, check=False)).returncode != 0
    assert (await sh("ip", "link", "show", net.bridge, check=False)).returncode != 0
