"""docker's embedded DNS on user-defined networks, end to end: busybox's nslookup in real
containers (runc, CNI bridge, real namespaces) asks 127.0.0.11; what the engine does not
know goes to a small DNS server of the test's own on a host loopback address, named by the
daemon's --resolv-conf (the host's resolver is never asked)."""

from __future__ import annotations

import random
import re
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.network import dns
from engine.network import dns_wire as w
from engine.testing.daemon import Daemon

from .conftest import start_engine, stop_engine
from .e2e_net_helpers import run_attached, run_d

UNANSWERED = "192.0.2.53"  # TEST-NET-1: in the resolv.conf, never reached by these tests


class Upstream:
    """A UDP DNS server on 127.x.y.z:53 answering NXDOMAIN to everything but ``known``."""

    def __init__(self) -> None:
        self.address = f"127.{random.randint(1, 250)}.{random.randint(1, 250)}.{random.randint(2, 250)}"
        self.known = {"outside.example": "192.0.2.77"}
        self.seen: list[str] = []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((self.address, 53))
        self.sock.settimeout(0.2)
        self.stopping = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopping:
            try:
                data, peer = self.sock.recvfrom(65535)
            except TimeoutError:
                continue
            try:
                q = w.parse_query(data)
            except w.MalformedMessage:
                continue
            self.seen.append(q.question.name)
            ip = self.known.get(q.question.name)
            if ip and q.question.qtype == w.A:
                reply = w.build_response(q, w.NOERROR, [w.a_record(ip, 60)], authoritative=False)
            elif ip:
                reply = w.build_response(q, w.NOERROR, authoritative=False)
            else:
                reply = w.build_response(q, w.NXDOMAIN, authoritative=False)
            self.sock.sendto(reply, peer)

    def close(self) -> None:
        self.stopping = True
        self.thread.join(timeout=5)
        self.sock.close()


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    server = Upstream()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def dns_engine(busybox_archive: Path, host_guard: None, upstream: Upstream, tmp_path: Path) -> Iterator[Daemon]:
    resolv = tmp_path / "resolv.conf"
    resolv.write_text(f"nameserver {upstream.address}\nnameserver {UNANSWERED}\nsearch corp.test\n")
    d = start_engine(busybox_archive, "runc", config={"resolv-conf": str(resolv)})
    try:
        yield d
    finally:
        stop_engine(d)


def exec_in(d: Daemon, cid: str, cmd: list[str]) -> tuple[int, str]:
    with d.client(timeout=30) as c:
        stream = c.stream("container.exec", id=cid, cmd=cmd)
        out = b"".join(item["data"] for item in stream)
        return int(stream.result["ExitCode"]), out.decode(errors="replace")


def addresses(nslookup_output: str) -> list[str]:
    """The answer addresses busybox's nslookup prints (after the server's own lines)."""
    answers = nslookup_output.split("\n\n", 1)[-1]
    return re.findall(r"^Address:\s*([0-9.]+)\s*$", answers, re.M)


def ip_on(d: Daemon, cid: str, network: str) -> str:
    return str(d.call("container.inspect", id=cid)["NetworkSettings"]["Networks"][network]["IPAddress"])


def test_names_aliases_and_forwarding_through_127_0_0_11(dns_engine: Daemon, upstream: Upstream) -> None:
    d = dns_engine
    d.call("network.create", name="dnsnet")
    web = run_d(d, name="web", network="dnsnet", network_aliases=["www"], cmd=["sleep", "1000"])
    web_ip = ip_on(d, web, "dnsnet")
    client = run_d(d, name="client", network="dnsnet", cmd=["sleep", "1000"])

    code, out = exec_in(d, client, ["cat", "/etc/resolv.conf"])
    assert code == 0 and "nameserver 127.0.0.11" in out and "options ndots:0" in out, out
    assert "search corp.test" in out and upstream.address not in out

    for name in ("web", "www", web[:12], "WEB.dnsnet"):
        code, out = exec_in(d, client, ["nslookup", name])
        assert code == 0 and addresses(out) == [web_ip], (name, out)
    code, out = exec_in(d, client, ["nslookup", "web", "127.0.0.11"])
    assert code == 0 and addresses(out) == [web_ip], out
    # As in docker, port 53 stays the container's own: the resolver is behind NAT rules.
    # (busybox's nc listens on the wildcard, which a listener on 127.0.0.11:53 would refuse)
    # (nc listens a moment after it starts: wait, 10 s at most, before the lookup)
    code, out = exec_in(d, client, ["sh", "-c", "nc -l -p 53 & i=0; until netstat -lnt | grep -q ':53 '; do "
                                    "i=$((i+1)); [ $i -gt 100 ] && break; sleep 0.1; done; netstat -lnt; "
                                    "nslookup web; ok=$?; kill %1; exit $ok"])
    assert code == 0 and addresses(out) == [web_ip], out
    assert re.search(r"^tcp .* (:::|0\.0\.0\.0:)53 .*LISTEN", out, re.M), out
    assert not any(n.startswith(("web", "www")) for n in upstream.seen), upstream.seen

    # Not a container: forwarded to the upstream, its answer relayed, quickly.
    code, out = exec_in(d, client, ["nslookup", "outside.example"])
    assert code == 0 and addresses(out) == ["192.0.2.77"], out
    # timed inside the container (the exec's own start-up is no part of it): a lookup that
    # timed out would take the resolver's whole SERVER_TIMEOUT
    code, out = exec_in(d, client, ["time", "-f", "took %e", "nslookup", "nosuch.example"])
    assert code != 0 and "NXDOMAIN" in out, out
    took = re.search(r"^took ([\d.]+)$", out, re.M)
    assert took and float(took[1]) < dns.SERVER_TIMEOUT, f"an unknown name must fail fast, not time out: {out}"
    assert "nosuch.example" in upstream.seen

    # Disconnected, the name goes with it (the upstream answers for it now: NXDOMAIN).
    d.call("network.disconnect", network="dnsnet", container="web")
    code, out = exec_in(d, client, ["nslookup", "web"])
    assert code != 0 and web_ip not in addresses(out), out
    d.call("network.connect", network="dnsnet", container="web", aliases=["again"])
    new_ip = ip_on(d, web, "dnsnet")
    code, out = exec_in(d, client, ["nslookup", "again"])
    assert code == 0 and addresses(out) == [new_ip], out


def test_only_containers_sharing_a_network_are_answered(dns_engine: Daemon, upstream: Upstream) -> None:
    d = dns_engine
    d.call("network.create", name="dnsa")
    d.call("network.create", name="dnsb")
    run_d(d, name="alpha", network="dnsa", cmd=["sleep", "1000"])
    code, out = run_attached(d, network="dnsb", cmd=["nslookup", "alpha"])
    assert code != 0 and "NXDOMAIN" in out, out
    assert "alpha.corp.test" in upstream.seen  # forwarded: the engine does not know it for dnsb


def test_the_default_bridge_keeps_the_hosts_resolv_conf(dns_engine: Daemon) -> None:
    code, out = run_attached(dns_engine, cmd=["cat", "/etc/resolv.conf"])
    assert code == 0, out
    # as before: the resolv.conf's nameservers minus loopback ones, its search domains
    assert "127.0.0.11" not in out and f"nameserver {UNANSWERED}" in out and "search corp.test" in out
    assert "127." not in out.replace("127.0.0.11", "")


def test_malformed_packets_do_not_stop_the_server(dns_engine: Daemon) -> None:
    d = dns_engine
    d.call("network.create", name="dnsbad")
    web = run_d(d, name="target", network="dnsbad", cmd=["sleep", "1000"])
    client = run_d(d, name="attacker", network="dnsbad", cmd=["sleep", "1000"])
    script = (
        "head -c 300 /dev/urandom | nc -u -w 1 127.0.0.11 53; "
        "printf '\\022\\064\\001' | nc -u -w 1 127.0.0.11 53; "  # a truncated header
        "printf '\\022\\064\\001\\000\\000\\000\\000\\000\\000\\000\\000\\000' | nc -u -w 1 127.0.0.11 53; "
        "head -c 100 /dev/urandom | nc -w 1 127.0.0.11 53; "
        "nslookup target"
    )
    code, out = exec_in(d, client, ["sh", "-c", script])
    assert code == 0 and addresses(out) == [ip_on(d, web, "dnsbad")], out


def test_lookups_work_again_after_the_daemon_is_killed_and_restarted(dns_engine: Daemon) -> None:
    d = dns_engine
    d.call("network.create", name="dnslive")
    web = run_d(d, name="svc", network="dnslive", cmd=["sleep", "1000"])
    client = run_d(d, name="asker", network="dnslive", cmd=["sleep", "1000"])
    web_ip = ip_on(d, web, "dnslive")
    pid = int(d.call("container.inspect", id=client)["State"]["Pid"])
    d.kill9()
    # the daemon is down: the resolver is gone, /etc/hosts still names the peer
    hosts = Path(f"/proc/{pid}/root/etc/hosts").read_text()
    assert re.search(rf"^{re.escape(web_ip)}\s.*\bsvc\b", hosts, re.M), hosts
    d.start()
    code, out = exec_in(d, client, ["nslookup", "svc"])
    assert code == 0 and addresses(out) == [web_ip], out



def test_a_renamed_peer_answers_to_its_new_name_only(dns_engine: Daemon, upstream: Upstream) -> None:
    """As docker: after `rename`, peers resolve the new name at once and not the old one,
    through the embedded DNS and through /etc/hosts; the container's own line too."""
    d = dns_engine
    d.call("network.create", name="dnsren")
    old = run_d(d, name="oldname", network="dnsren", cmd=["sleep", "1000"])
    old_ip = ip_on(d, old, "dnsren")
    client = run_d(d, name="looker", network="dnsren", cmd=["sleep", "1000"])
    code, out = exec_in(d, client, ["nslookup", "oldname"])
    assert code == 0 and addresses(out) == [old_ip], out

    d.call("container.rename", id="oldname", name="newname")
    code, out = exec_in(d, client, ["nslookup", "newname"])
    assert code == 0 and addresses(out) == [old_ip], out
    code, out = exec_in(d, client, ["nslookup", "oldname"])
    assert code != 0 and old_ip not in addresses(out), out
    code, hosts = exec_in(d, client, ["cat", "/etc/hosts"])
    assert code == 0 and re.search(rf"^{re.escape(old_ip)}\s.*\bnewname\b", hosts, re.M), hosts
    assert "oldname" not in hosts, hosts
    code, own = exec_in(d, old, ["cat", "/etc/hosts"])
    assert code == 0 and "newname" in own and "oldname" not in own, own
    # the name sticks across a restart of the peer (the records are written anew then)
    d.call("container.stop", id="newname", timeout=1)
    d.call("container.start", id="newname")
    code, out = exec_in(d, client, ["nslookup", "newname"])
    assert code == 0 and len(addresses(out)) == 1, out


def test_connecting_a_running_container_gives_it_the_resolver(dns_engine: Daemon, upstream: Upstream) -> None:
    """As docker: a container started on the default bridge and then connected to a
    user-defined network has its resolv.conf rewritten in place (same inode) to name
    127.0.0.11 and resolves its new peers at once; leaving that network keeps both."""
    d = dns_engine
    d.call("network.create", name="dnslate")
    peer = run_d(d, name="early", network="dnslate", network_aliases=["first"], cmd=["sleep", "1000"])
    peer_ip = ip_on(d, peer, "dnslate")
    late = run_d(d, name="late", cmd=["sleep", "1000"])
    code, before = exec_in(d, late, ["sh", "-c", "ls -i /etc/resolv.conf; cat /etc/resolv.conf"])
    assert code == 0 and "127.0.0.11" not in before and f"nameserver {UNANSWERED}" in before, before

    d.call("network.connect", network="dnslate", container="late", aliases=["tardy"])
    code, after = exec_in(d, late, ["sh", "-c", "ls -i /etc/resolv.conf; cat /etc/resolv.conf"])
    assert code == 0 and after.split()[0] == before.split()[0], (before, after)
    assert "nameserver 127.0.0.11" in after and "options ndots:0" in after and "search corp.test" in after
    assert UNANSWERED not in after, after
    for name in ("early", "first"):
        code, out = exec_in(d, late, ["nslookup", name])
        assert code == 0 and addresses(out) == [peer_ip], (name, out)
    late_ip = ip_on(d, late, "dnslate")
    for name in ("late", "tardy"):
        code, out = exec_in(d, peer, ["nslookup", name])
        assert code == 0 and addresses(out) == [late_ip], (name, out)
    code, out = exec_in(d, late, ["nslookup", "outside.example"])  # forwarded as before
    assert code == 0 and addresses(out) == ["192.0.2.77"], out

    d.call("network.disconnect", network="dnslate", container="late")
    code, out = exec_in(d, late, ["cat", "/etc/resolv.conf"])
    assert code == 0 and "nameserver 127.0.0.11" in out, out  # docker keeps it too
    code, out = exec_in(d, late, ["nslookup", "early"])
    assert code != 0 and peer_ip not in addresses(out), out
    # connected again: the resolver it kept answers for the network again
    d.call("network.connect", network="dnslate", container="late")
    code, out = exec_in(d, late, ["nslookup", "early"])
    assert code == 0 and addresses(out) == [peer_ip], out
    # a restart on the default bridge alone gives back the plain resolv.conf
    d.call("network.disconnect", network="dnslate", container="late")
    d.call("container.stop", id="late", timeout=1)
    d.call("container.start", id="late")
    code, out = exec_in(d, late, ["cat", "/etc/resolv.conf"])
    assert code == 0 and "127.0.0.11" not in out, out
