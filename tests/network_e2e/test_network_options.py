"""docker's network create options (``-o``), ``--ip-range``, ``--aux-address`` and a
container's ``--mac-address``: real runc, CNI (bridge + host-local), namespaces and iptables.

What each one promises is looked at where it happens: the MTU inside the container and on
the host's bridge, the bridge's own name on the host (gone with the network), no SNAT rule
for a network without masquerade, addresses from the sub-range only and never the auxiliary
one, the MAC on the container's interface, containers of an ``enable_icc=false`` network
not reaching each other; and all of it again after a restart and after the daemon was
killed. What dockerd refuses is refused in its words, and nothing is left of a refusal.
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from engine.errors import Conflict, InvalidArgument
from engine.testing.daemon import Daemon

from .e2e_net_helpers import Scope, diff, host_output, run_attached, run_d, snapshot

MAC = "02:42:ac:11:00:42"


def engctl(d: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "engine.cli.main", *args], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "ENGINE_HOST": d.host})


def ok(d: Daemon, *args: str) -> str:
    done = engctl(d, *args)
    assert done.returncode == 0, (args, done.stderr)
    return done.stdout


def own_subnet(d: Daemon, k: int) -> ipaddress.IPv4Network:
    """The k-th /24 (1..15) of the daemon's own pool: no other test's daemon uses it."""
    return list(ipaddress.IPv4Network(d.net.pool).subnets(new_prefix=24))[k]


def at(subnet: ipaddress.IPv4Network, n: int) -> str:
    return str(subnet.network_address + n)


def bridge_name() -> str:
    return f"eo{secrets.token_hex(4)}"  # unique on the host (other runs, other engines)


def link_exists(name: str) -> bool:
    return subprocess.run(["ip", "link", "show", "dev", name], capture_output=True).returncode == 0


def inside(d: Daemon, ref: str, *cmd: str) -> str:
    return ok(d, "exec", ref, *cmd)


def settings(d: Daemon, ref: str) -> dict[str, object]:
    return d.call("container.inspect", id=ref)["NetworkSettings"]  # type: ignore[no-any-return]


def snat_rules(ip: str) -> list[str]:
    """The nat POSTROUTING rules the bridge plugin's ipMasq adds for a container's address."""
    return [r for r in host_output("iptables", "-w", "5", "-t", "nat", "-S", "POSTROUTING").splitlines()
            if f"-s {ip}/32" in r]


def test_mtu_bridge_name_masquerade_and_mac_survive_restarts(runc_engine: Daemon) -> None:
    d = runc_engine
    subnet, plain_subnet = own_subnet(d, 1), own_subnet(d, 2)
    bridge = bridge_name()
    ok(d, "network", "create", "--subnet", str(subnet), "-o", "com.docker.network.driver.mtu=1400",
       "--opt", f"com.docker.network.bridge.name={bridge}",
       "-o", "com.docker.network.bridge.enable_ip_masquerade=false", "tuned")
    ok(d, "network", "create", "--subnet", str(plain_subnet), "plain")
    options = json.loads(ok(d, "network", "inspect", "-f", "{{json .Options}}", "tuned"))
    assert options == {"com.docker.network.driver.mtu": "1400", "com.docker.network.bridge.name": bridge,
                       "com.docker.network.bridge.enable_ip_masquerade": "false"}
    ok(d, "run", "-d", "--name", "c1", "--network", "tuned", "--mac-address", MAC.upper().replace(":", "-"),
       "busybox", "sleep", "1000")
    ok(d, "run", "-d", "--name", "control", "--network", "plain", "busybox", "sleep", "1000")
    control_ip = str(settings(d, "control")["IPAddress"])

    def check() -> None:
        link = inside(d, "c1", "ip", "link", "show", "eth0")
        assert "mtu 1400" in link and f"link/ether {MAC}" in link, link
        assert "mtu 1400" in host_output("ip", "link", "show", "dev", bridge)
        ns = settings(d, "c1")  # the Docker API's top-level MacAddress: test_docker_network_options
        assert ns["Networks"]["tuned"]["MacAddress"] == MAC  # type: ignore[index]
        ip = str(ns["IPAddress"])
        assert ip in inside(d, "c1", "ip", "-4", "addr", "show", "eth0")
        assert snat_rules(ip) == []  # masquerade off: no SNAT for the network's containers
        assert snat_rules(control_ip), "the control network (masquerade on) has its SNAT rule"

    check()
    ok(d, "restart", "-t", "1", "c1")
    check()
    d.kill9()
    d.start()
    check()
    ok(d, "stop", "-t", "1", "c1")
    ok(d, "start", "c1")
    check()
    # stopped, the network keeps its options; the last container out removes the bridge,
    # and `network rm` leaves nothing of it
    ok(d, "rm", "-f", "c1")
    assert json.loads(ok(d, "network", "inspect", "-f", "{{json .Options}}", "tuned")) == options
    ok(d, "network", "rm", "tuned")
    assert not link_exists(bridge)


def test_ip_range_and_aux_address(runc_engine: Daemon) -> None:
    d = runc_engine
    subnet = own_subnet(d, 3)
    sub_range = ipaddress.IPv4Network(f"{at(subnet, 128)}/28")
    aux = at(subnet, 130)
    ok(d, "network", "create", "--subnet", str(subnet), "--ip-range", str(sub_range), "--aux-address",
       f"router={aux}", "ranged")
    ipam = json.loads(ok(d, "network", "inspect", "-f", "{{json .IPAM.Config}}", "ranged"))
    # dockerd's gateway for a range without --gateway: the range's first address
    assert ipam == [{"Subnet": str(subnet), "Gateway": at(subnet, 128), "IPRange": str(sub_range),
                     "AuxiliaryAddresses": {"router": aux}}]
    ids = [run_d(d, network="ranged", cmd=["sleep", "1000"]) for _ in range(3)]
    got = [str(settings(d, c)["IPAddress"]) for c in ids]
    assert all(ipaddress.IPv4Address(ip) in sub_range for ip in got), got
    assert aux not in got and len(set(got)) == 3, got
    assert got == [at(subnet, 129), at(subnet, 131), at(subnet, 132)]
    # a container's own address may lie outside the range (dockerd allows it), not on the aux
    fixed = run_d(d, network="ranged", ip=at(subnet, 5), cmd=["sleep", "1000"])
    assert f"inet {at(subnet, 5)}/24" in inside(d, fixed, "ip", "-4", "addr", "show", "eth0")
    taker = d.call("container.create", image="busybox", network="ranged", ip=aux, cmd=["sleep", "1000"])["Id"]
    with pytest.raises(Conflict, match=f"Address already in use: {aux} is the auxiliary address 'router'"):
        d.call("container.start", id=taker)
    d.call("container.remove", id=taker, force=True)
    # killed: reconcile keeps the aux reservation (it is no container's lease)
    d.kill9()
    d.start()
    more = [run_d(d, network="ranged", cmd=["sleep", "1000"]) for _ in range(2)]
    got2 = [str(settings(d, c)["IPAddress"]) for c in more]
    assert aux not in got2 and all(ipaddress.IPv4Address(ip) in sub_range for ip in got2), got2
    d.remove_all_containers()
    ok(d, "network", "rm", "ranged")
    assert not (d.root / "networks" / "ipam" / "ranged").exists()


def test_icc_off_keeps_containers_apart(runc_engine: Daemon) -> None:
    d = runc_engine
    apart, together = own_subnet(d, 4), own_subnet(d, 5)
    ok(d, "network", "create", "--subnet", str(apart), "-o", "com.docker.network.bridge.enable_icc=false", "apart")
    ok(d, "network", "create", "--subnet", str(together), "together")
    for net in ("apart", "together"):
        target = run_d(d, network=net, cmd=["sleep", "1000"])
        ip = str(settings(d, target)["IPAddress"])
        code, out = run_attached(d, network=net, cmd=["ping", "-c", "1", "-W", "2", ip])
        assert (code == 0) == (net == "together"), (net, out)
        # the gateway (the host) answers either way
        code, out = run_attached(d, network=net, cmd=["ping", "-c", "1", "-W", "2", at(ipaddress.IPv4Network(
            str(apart if net == "apart" else together)), 1)])
        assert code == 0, (net, out)


def test_refusals_in_dockerds_words_leave_nothing(runc_engine: Daemon) -> None:
    d = runc_engine
    subnet = own_subnet(d, 6)
    bridge = bridge_name()
    ok(d, "network", "create", "--subnet", str(subnet), "-o", f"com.docker.network.bridge.name={bridge}", "first")
    scope = Scope()
    scope.learn(d)
    before = snapshot(d, scope)
    other = str(own_subnet(d, 7))
    cases: list[tuple[dict[str, object], type[Exception], str]] = [
        ({"options": {"com.docker.network.driver.mtu": "abc"}}, InvalidArgument,
         'failed to parse com.docker.network.driver.mtu value: abc (strconv.Atoi: parsing "abc": invalid syntax)'),
        ({"options": {"com.docker.network.bridge.enable_ip_masquerade": "maybe"}}, InvalidArgument,
         "failed to parse com.docker.network.bridge.enable_ip_masquerade value: maybe"),
        ({"options": {"com.docker.network.bridge.name": "abcdefghijklmnopq"}}, InvalidArgument,
         "failed to check bridge interface existence: numerical result out of range"),
        ({"options": {"com.docker.network.bridge.name": "lo"}}, Conflict, "existing interface lo is not a bridge"),
        ({"options": {"com.docker.network.bridge.name": bridge}}, Conflict, "networks have same bridge name"),
        ({"options": {"com.docker.network.bridge.host_binding_ipv4": "127.0.0.1"}}, InvalidArgument,
         "network option com.docker.network.bridge.host_binding_ipv4 is not supported"),
        ({"ip_range": "10.250.0.0/28"}, InvalidArgument, "no matching subnet for range 10.250.0.0/28"),
        ({"aux_addresses": {"x": "10.250.0.1"}}, InvalidArgument, "no matching subnet for aux-address 10.250.0.1"),
        ({"aux_addresses": {"x": other.replace(".0/24", ".1")}}, InvalidArgument,
         f"failed to allocate secondary ip address (x:{other.replace('.0/24', '.1')}): Address already in use"),
    ]
    for extra, error, words in cases:
        with pytest.raises(error) as raised:
            d.call("network.create", name="second", subnet=other, **extra)
        assert words in str(raised.value), (extra, raised.value)
    with pytest.raises(InvalidArgument, match="every ip-range or gateway must have a corresponding subnet"):
        d.call("network.create", name="second", ip_range="10.250.0.0/28")
    made = engctl(d, "network", "create", "-o", "novalue", "second")
    assert made.returncode != 0 and "expected KEY=VALUE" in made.stderr
    # --mac-address: malformed, multicast, and off a bridge network
    for bad in ("zz:42", "02:42:ac:11:00", "03:42:ac:11:00:01"):
        ran = engctl(d, "run", "-d", "--network", "first", "--mac-address", bad, "busybox", "true")
        assert ran.returncode != 0 and f"{bad} is not a valid mac address" in ran.stderr, ran.stderr
    for mode in ("host", "container:x"):
        with pytest.raises(InvalidArgument, match="conflicting options: mac-address and the network mode"):
            d.call("container.create", image="busybox", network=mode, mac_address=MAC)
    assert d.call("system.ping") == "pong"
    assert {n["Name"] for n in d.call("network.list")} >= {"first"}
    assert "second" not in {n["Name"] for n in d.call("network.list")}
    assert d.call("container.list", all=True) == []
    assert diff(before, snapshot(d, scope)) == {}


def test_a_network_stored_before_the_options_keeps_working(tmp_path: Path) -> None:
    """A definition written without the new fields reads with docker's defaults, and its
    CNI configuration is the one it had (masquerade on, no MTU, the whole subnet)."""
    from engine.convert import disk
    from engine.network.networks import Network, NetworkStore

    old = {"name": "legacy", "id": "ab" * 32, "driver": "bridge", "subnet": "10.77.0.0/24",
           "gateway": "10.77.0.1", "internal": False, "bridge": "eng-abababab", "labels": {},
           "created": 1.0, "pooled": False}
    net = disk.structure(old, Network)
    assert (net.options, net.mtu, net.masquerade, net.icc, net.ip_range, net.aux_addresses) == (
        {}, 0, True, True, "", {})
    bridge = NetworkStore(tmp_path / "nets").conflist(net)["plugins"][0]
    assert bridge["ipMasq"] is True and "mtu" not in bridge
    assert bridge["ipam"]["ranges"] == [[{"subnet": "10.77.0.0/24", "gateway": "10.77.0.1"}]]
