"""Nothing leaks: attach/detach cycles and reconcile after a crash leave the host as before."""

from __future__ import annotations

import ipaddress
import re

from engine.network import cni, netns
from engine.network.networks import NetworkStore
from engine.network.ports import parse_publish
from engine.network.reconcile import reconcile

from .conftest import NetEnv, curl, sh

_COUNTERS = re.compile(r"\[\d+:\d+\]")


async def _markers(env: NetEnv, extra: tuple[str, ...]) -> list[str]:
    """What marks this test's things on the host: its store's bridges, subnets and chains
    (all its own, from its network slot) and ``extra`` (its published ports). Other tests
    and daemons on the host are busy too; only ours is compared."""
    found = [*env.store.settings.chains, *extra]
    for net in await env.store.list():
        if not net.is_pseudo:
            found += [net.bridge, net.subnet.rsplit(".", 1)[0] + "."]
    return found


async def snapshot(env: NetEnv, *extra: str) -> dict[str, object]:
    markers = await _markers(env, extra)
    links = (await sh("ip", "-o", "link", "show")).stdout.decode().splitlines()
    rules = (await sh("iptables-save")).stdout.decode().splitlines()
    mounts = (await sh("cat", "/proc/self/mountinfo")).stdout.decode()
    return {
        "links": sorted(line.split(":")[1].strip().split("@")[0] for line in links
                        if any(f" {m}:" in line or f"master {m} " in line for m in markers)),
        "iptables": sorted(_COUNTERS.sub("", r) for r in rules
                           if not r.startswith("#") and any(m in r for m in markers)),
        "nsfs_mounts": sorted(line.split()[4] for line in mounts.splitlines()
                              if " nsfs " in line and str(env.netns_dir) in line),
        "netns_files": await netns.list_names(env.netns_dir),
        "leases": (await sh("find", str(env.store.ipam_dir), "-name", "[0-9]*")).stdout.decode(),
        "records": await cni.attachments(env.store),
    }


async def _cycle(env: NetEnv, net_name: str, cid: str, publish: str) -> None:
    net = await env.store.get(net_name)
    ns = await env.netns(cid)
    await cni.attach(env.store, net, cid, ns, port_mappings=parse_publish(publish))
    await cni.detach(env.store, net, cid)
    await netns.delete(env.netns_dir, cid)


async def test_twenty_attach_detach_cycles_leave_no_trace(env: NetEnv) -> None:
    await env.store.create("cyc")
    port = parse_publish("127.0.0.1::80")[0].host_port
    publish = f"127.0.0.1:{port}:80"
    # One warm-up: the plugins' shared base chains (CNI-HOSTPORT-*, CNI-FORWARD/ADMIN)
    # appear on first use and stay by design; everything per-container must go.
    await _cycle(env, "cyc", "warmup", publish)
    marks = (f"dport {port} ", f"dports {port} ")
    before = await snapshot(env, *marks)
    for i in range(20):
        await _cycle(env, "cyc", f"cyc{i:04d}", publish)
    after = await snapshot(env, *marks)
    assert after == before


async def test_reconcile_after_crash_removes_everything(env: NetEnv) -> None:
    net = await env.store.create("crash")
    baseline_net = await env.store.create("warm")
    await _cycle(env, "warm", "warmup", "127.0.0.1::81")
    ports = {cid: parse_publish("127.0.0.1::80")[0] for cid in ("gone0001", "gone0002")}
    marks = [f"dport{s} {m.host_port} " for m in ports.values() for s in ("", "s")]
    before = await snapshot(env, *marks)
    kept_ns = await env.netns("keepme")
    kept = await cni.attach(env.store, baseline_net, "keepme", kept_ns)
    for cid in ("gone0001", "gone0002"):
        ns = await env.netns(cid)
        await cni.attach(env.store, net, cid, ns, port_mappings=[ports[cid]])
    # A stray lease nothing explains (say, host-local wrote it, then the daemon died).
    stray = str(ipaddress.ip_network(net.subnet)[250])
    (env.store.ipam_dir / "crash" / stray).write_text("ghost\r\neth0")
    # The "crash": a fresh store object knows nothing in memory, and one namespace is
    # already gone (as after a reboot), so its DEL runs without a namespace.
    await sh("umount", str(env.netns_dir / "gone0002"))
    (env.netns_dir / "gone0002").unlink()
    fresh = NetworkStore(env.store.directory, env.store.settings)
    report = await reconcile(fresh, env.netns_dir, keep={"keepme"})
    assert sorted(report.detached) == ["gone0001@crash", "gone0002@crash"]
    assert report.netns_removed == ["gone0001"]
    assert report.leases_released == [f"crash/{stray}"]
    assert report.errors == []
    # The kept container is untouched; the rest is exactly as before the crash.
    assert [a.container_id for a in await cni.attachments(fresh)] == ["keepme"]
    assert await netns.exists(env.netns_dir, "keepme")
    assert (env.store.ipam_dir / "warm" / kept.ip).exists()
    for mapping in ports.values():
        assert await curl(f"http://127.0.0.1:{mapping.host_port}/", seconds=1) is None
    await cni.detach(fresh, baseline_net, "keepme")
    await netns.delete(env.netns_dir, "keepme")
    assert await snapshot(env, *marks) == before
    # Nothing left to do the second time.
    again = await reconcile(fresh, env.netns_dir, keep=set())
    assert (again.detached, again.netns_removed, again.leases_released) == ([], [], [])
