"""A container's own address on a user network (``--ip``, docker's IPAMConfig): real runc,
CNI (bridge + host-local's ``ips`` capability) and namespaces.

The address is the container's: it has it inside (``ip addr``), peers reach it there, and
it gets it again at every start and after the daemon was killed. What dockerd refuses is
refused in its words (at start and at connect), naming the address, and leaves the
daemon, the container holding the address and the host's networking as they were.
"""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys

import pytest

from engine.errors import Conflict, EngineError, InvalidArgument
from engine.network import static_ip
from engine.testing.daemon import Daemon

from .e2e_net_helpers import HTTPD, Scope, diff, run_attached, run_d, snapshot, wait_http

LOCAL_DNS = ["127.0.0.1"]  # names through /etc/hosts only (the egress guard blocks the host's)
GET = "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {host} 80"


def engctl(d: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "engine.cli.main", *args], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "ENGINE_HOST": d.host})


def own_subnet(d: Daemon, k: int) -> ipaddress.IPv4Network:
    """The k-th /24 (1..15) of the daemon's own pool: no other test's daemon uses it."""
    pool = ipaddress.IPv4Network(d.net.pool)
    return list(pool.subnets(new_prefix=24))[k]


def host(subnet: ipaddress.IPv4Network, n: int) -> str:
    return str(subnet.network_address + n)


def make_network(d: Daemon, name: str, k: int) -> ipaddress.IPv4Network:
    subnet = own_subnet(d, k)
    made = engctl(d, "network", "create", "--subnet", str(subnet), name)
    assert made.returncode == 0, made.stderr
    return subnet


def endpoint(d: Daemon, ref: str, network: str) -> dict[str, object]:
    return d.call("container.inspect", id=ref)["NetworkSettings"]["Networks"][network]  # type: ignore[no-any-return]


def inside_addresses(d: Daemon, ref: str) -> str:
    shown = engctl(d, "exec", ref, "ip", "-4", "-o", "addr", "show")
    assert shown.returncode == 0, shown.stderr
    return shown.stdout


def test_run_with_ip_keeps_the_address_across_starts_and_a_daemon_kill(engine: Daemon) -> None:
    subnet = make_network(engine, "fixed", 1)
    ip = host(subnet, 7)
    ran = engctl(engine, "run", "-d", "--name", "web", "--network", "fixed", "--ip", ip, "busybox",
                 "sh", "-c", HTTPD.format(text="from-web", port=80))
    assert ran.returncode == 0, ran.stderr
    ep = endpoint(engine, "web", "fixed")
    assert ep["IPAddress"] == ip and ep["IPAMConfig"] == {"IPv4Address": ip}
    assert engine.call("container.inspect", id="web")["NetworkSettings"]["IPAddress"] == ip
    assert f"inet {ip}/24" in inside_addresses(engine, "web")
    wait_http(f"http://{ip}/")

    def peer_reaches() -> None:
        code, out = run_attached(engine, network="fixed", dns=LOCAL_DNS,
                                 cmd=["sh", "-c", GET.format(host=ip)])
        assert code == 0 and "from-web" in out, out

    peer_reaches()
    # a container started while web is stopped may take any address but web's next start
    assert engctl(engine, "stop", "-t", "1", "web").returncode == 0
    other = run_d(engine, name="other", network="fixed", cmd=["sleep", "1000"])
    assert endpoint(engine, other, "fixed")["IPAMConfig"] is None
    assert engctl(engine, "start", "web").returncode == 0
    assert endpoint(engine, "web", "fixed")["IPAddress"] == ip
    assert f"inet {ip}/24" in inside_addresses(engine, "web")
    wait_http(f"http://{ip}/")
    # killed: the new daemon finds web running as it was, and starts it there again
    engine.kill9()
    engine.start()
    ep = endpoint(engine, "web", "fixed")
    assert ep["IPAddress"] == ip and ep["IPAMConfig"] == {"IPv4Address": ip}
    peer_reaches()
    assert engctl(engine, "restart", "-t", "1", "web").returncode == 0
    assert endpoint(engine, "web", "fixed")["IPAddress"] == ip
    assert f"inet {ip}/24" in inside_addresses(engine, "web")
    peer_reaches()


def test_connect_with_ip_live_and_before_start(runc_engine: Daemon) -> None:
    d = runc_engine
    front = make_network(d, "front", 2)
    back = make_network(d, "back", 3)
    assert engctl(d, "run", "-d", "--name", "app", "--network", "front", "--ip", host(front, 20),
                  "busybox", "sleep", "1000").returncode == 0
    connected = engctl(d, "network", "connect", "--ip", host(back, 30), "back", "app")
    assert connected.returncode == 0, connected.stderr
    ep = endpoint(d, "app", "back")
    assert ep["IPAddress"] == host(back, 30) and ep["IPAMConfig"] == {"IPv4Address": host(back, 30)}
    shown = inside_addresses(d, "app")
    assert f"inet {host(front, 20)}/24" in shown and f"inet {host(back, 30)}/24" in shown
    code, out = run_attached(d, network="back", cmd=["ping", "-c", "1", "-W", "2", host(back, 30)])
    assert code == 0, out
    # a created container: the address is recorded now and given at its start
    d.call("container.create", image="busybox", name="late", network="front", cmd=["sleep", "1000"])
    d.call("network.connect", network="back", container="late", ip=host(back, 31))
    d.call("container.start", id="late")
    assert endpoint(d, "late", "back")["IPAddress"] == host(back, 31)
    assert endpoint(d, "late", "front")["IPAMConfig"] is None
    # stop and start: both addresses again
    d.call("container.stop", id="app", timeout=1)
    d.call("container.start", id="app")
    assert endpoint(d, "app", "front")["IPAddress"] == host(front, 20)
    assert endpoint(d, "app", "back")["IPAddress"] == host(back, 30)


def test_refusals_in_dockerds_words(runc_engine: Daemon) -> None:
    d = runc_engine
    subnet = make_network(d, "strict", 4)
    d.call("network.create", name="pooled")  # no --subnet: an automatic one
    holder = run_d(d, name="holder", network="strict", ip=host(subnet, 5),
                   cmd=["sh", "-c", HTTPD.format(text="holder", port=80)])
    wait_http(f"http://{host(subnet, 5)}/")
    scope = Scope()
    scope.learn(d)
    scope.container_ids.add(holder)
    before = snapshot(d, scope)

    # malformed: refused at create, nothing made
    for bad in ("10.1.2.300", "bogus", "::1"):
        with pytest.raises(InvalidArgument, match=f"invalid IPv4 address: {bad}"):
            d.call("container.create", image="busybox", network="strict", ip=bad)
    ran = engctl(d, "run", "-d", "--network", "strict", "--ip", "1.2.3", "busybox", "true")
    assert ran.returncode != 0 and "invalid IPv4 address: 1.2.3" in ran.stderr
    # --ip with a namespace mode is refused at create too
    with pytest.raises(InvalidArgument, match=static_ip.ON_PREDEFINED):
        d.call("container.create", image="busybox", network="host", ip=host(subnet, 9))

    # at start, as dockerd: the default network, an automatic subnet, outside, gateway, taken
    cases = [
        ("", host(subnet, 9), InvalidArgument, static_ip.ON_PREDEFINED),
        ("pooled", "10.200.0.9", InvalidArgument, static_ip.ON_POOLED),
        ("strict", "10.250.0.9", InvalidArgument,
         "Invalid address 10.250.0.9: It does not belong to any of this network's subnets"),
        ("strict", host(subnet, 1), Conflict, f"Address already in use: {host(subnet, 1)} is the gateway"),
        ("strict", host(subnet, 5), Conflict,
         f"Address already in use: {host(subnet, 5)} on network 'strict' is held by container holder"),
    ]
    for network, ip, error, words in cases:
        cid = d.call("container.create", image="busybox", network=network, ip=ip, cmd=["sleep", "1000"])["Id"]
        with pytest.raises(error) as raised:
            d.call("container.start", id=cid)
        assert str(raised.value).startswith(words), raised.value
        assert d.call("container.inspect", id=cid)["State"]["Running"] is False
        d.call("container.remove", id=cid, force=True)
    # the same at connect (a running container), and the holder is untouched
    spare = run_d(d, name="spare", cmd=["sleep", "1000"])  # on the default network
    for network, ip, error, words in cases[1:]:
        with pytest.raises(error) as raised:
            d.call("network.connect", network=network, container="spare", ip=ip)
        assert str(raised.value).startswith(words), raised.value
    d.call("network.connect", network="pooled", container="spare")  # without --ip it joins
    with pytest.raises(InvalidArgument, match=static_ip.ON_PREDEFINED):
        d.call("network.connect", network="bridge", container="holder", ip="10.1.1.1")
    connected = engctl(d, "network", "connect", "--ip", "bad", "pooled", "holder")
    assert connected.returncode != 0 and "invalid IPv4 address: bad" in connected.stderr
    assert d.call("system.ping") == "pong"
    assert endpoint(d, holder, "strict")["IPAddress"] == host(subnet, 5)
    wait_http(f"http://{host(subnet, 5)}/")
    assert set(d.call("container.inspect", id="spare")["NetworkSettings"]["Networks"]) == {"bridge", "pooled"}
    d.call("container.remove", id=spare, force=True)
    for network in ("pooled",):
        d.call("network.remove", id=network)
    assert diff(before, snapshot(d, scope)) == {}
    # once the holder is gone, the address is free for another container
    d.call("container.remove", id=holder, force=True)
    taker = run_d(d, network="strict", ip=host(subnet, 5), cmd=["sleep", "1000"])
    assert endpoint(d, taker, "strict")["IPAddress"] == host(subnet, 5)


def test_refused_start_leaves_no_networking(runc_engine: Daemon) -> None:
    """The second of two created containers with one address is refused at its start, and
    leaves neither an attachment nor a namespace behind."""
    d = runc_engine
    subnet = make_network(d, "race", 5)
    first = d.call("container.create", image="busybox", network="race", ip=host(subnet, 8),
                   cmd=["sleep", "1000"])["Id"]
    second = d.call("container.create", image="busybox", network="race", ip=host(subnet, 8),
                    cmd=["sleep", "1000"])["Id"]
    d.call("container.start", id=first)
    with pytest.raises(EngineError, match=host(subnet, 8)):
        d.call("container.start", id=second)
    info = d.call("network.inspect", id="race")
    assert set(info["Containers"]) == {first}
    assert not os.path.exists(d.run_root / "netns" / second)


def test_records_written_before_static_addresses_still_load() -> None:
    """A network definition, a networks.json and a container config written before these
    fields existed load with the defaults (no address; --ip allowed on the network)."""
    from engine.actors.model import ContainerConfig
    from engine.convert import disk
    from engine.network.networks import Network
    from engine.network.service import Membership, _Memberships

    net = disk.structure({"name": "old", "id": "ab" * 32, "subnet": "10.9.0.0/24", "gateway": "10.9.0.1",
                          "bridge": "eng-old", "created": 1.0}, Network)
    assert net.pooled is False
    static_ip.check_network(net, "10.9.0.7")  # a network of old: its subnet may have been given
    members = disk.structure({"networks": [{"network": "old", "aliases": ["a"]}]}, _Memberships)
    assert members.networks == [Membership("old", ["a"], "")]
    config = disk.structure({"id": "c" * 64, "name": "x", "image": "busybox", "image_id": "i",
                             "created": 1.0, "runtime": "runc"}, ContainerConfig)
    assert config.ipv4_address == ""
