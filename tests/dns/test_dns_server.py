"""The embedded DNS server in a real network namespace, without a daemon: sockets opened
through setns, queries from inside the namespace, a real UDP/TCP upstream on the host's
loopback, hostile packets."""

from __future__ import annotations

import os
import random
import socket
import struct
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from engine.network import dns, netns
from engine.network import dns_wire as w
from engine.testing.daemon import require, require_binary

PEER = "b" * 64
ASKER = "a" * 64
STRANGER = "c" * 64


@attrs.frozen
class Rec:
    """What endpoints_from reads of a cni.Attachment."""

    container_id: str
    network_name: str
    ifname: str
    name: str
    aliases: list[str]
    ip: str
    result: dict[str, Any] | None = attrs.field(factory=dict)


def _records() -> list[Rec]:
    return [
        Rec(ASKER, "app", "eth0", "asker", [], "10.99.0.2"),
        Rec(PEER, "app", "eth0", "Web", ["www"], "10.99.0.3"),
        Rec(PEER, "bridge", "eth1", "Web", [], "10.88.0.3"),  # the default network: no DNS
        Rec(STRANGER, "other", "eth0", "stranger", [], "10.98.0.2"),
    ]


@attrs.define
class Env:
    server: dns.EmbeddedDns
    ns: Path
    records: list[Rec]

    def client(self, kind: int = socket.SOCK_DGRAM) -> trio.socket.SocketType:
        sock = dns.run_in_netns(self.ns, lambda: socket.socket(socket.AF_INET, kind))
        return trio.socket.from_stdlib_socket(sock)

    async def ask(self, data: bytes, wait: float = 3) -> bytes | None:
        with self.client() as sock:
            await sock.sendto(data, (dns.ADDRESS, dns.PORT))
            with trio.move_on_after(wait):
                return await sock.recv(65535)
        return None

    async def ask_tcp(self, data: bytes) -> bytes:
        with self.client(socket.SOCK_STREAM) as sock:
            with trio.fail_after(5):
                await sock.connect((dns.ADDRESS, dns.PORT))
                stream = trio.SocketStream(sock)
                await stream.send_all(struct.pack("!H", len(data)) + data)
                return await dns._read_framed(stream)


class Upstream:
    """A UDP+TCP DNS server on a host loopback address: NXDOMAIN for everything, or a fixed
    reply (with the asker's id) when ``canned`` is set."""

    def __init__(self) -> None:
        self.address = f"127.{random.randint(1, 250)}.{random.randint(1, 250)}.{random.randint(2, 250)}"
        self.canned: bytes | None = None
        self.seen: list[str] = []

    def reply_to(self, data: bytes) -> bytes:
        q = w.parse_query(data)
        self.seen.append(q.question.name)
        if self.canned is not None:
            return data[:2] + self.canned[2:]
        return w.build_response(q, w.NXDOMAIN, authoritative=False)

    async def serve(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        udp = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        await udp.bind((self.address, 0))
        self.port = udp.getsockname()[1]
        listener = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        await listener.bind((self.address, self.port))
        listener.listen(8)

        async def udp_loop() -> None:
            while True:
                data, peer = await udp.recvfrom(65535)
                await udp.sendto(self.reply_to(data), peer)

        async def tcp_loop() -> None:
            while True:
                conn, _ = await listener.accept()
                stream = trio.SocketStream(conn)
                async with stream:
                    data = await dns._read_framed(stream)
                    reply = self.reply_to(data)
                    await stream.send_all(struct.pack("!H", len(reply)) + reply)

        with udp, listener:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(udp_loop)
                nursery.start_soon(tcp_loop)
                task_status.started()


@pytest.fixture(params=[True, False], ids=["nat", "direct"])
async def env(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[tuple[Env, Upstream]]:
    """A namespace with lo up and a resolver for ASKER in it: behind NAT rules to ports of
    its own (as the daemon runs it), or bound to 127.0.0.11:53 itself."""
    require(os.geteuid() == 0, "needs root (network namespaces)")
    for tool in ("unshare", "nsenter", "iptables-restore"):
        require_binary(tool)
    redirect: bool = request.param
    netns_dir = tmp_path / "netns"
    ns = await netns.create(netns_dir, "dnstest")
    threads_before = threading.active_count()
    try:
        await trio.run_process(["nsenter", f"--net={ns}", "ip", "link", "set", "lo", "up"])
        records = _records()

        async def read_records() -> list[Rec]:
            return list(records)

        upstream = Upstream()
        async with trio.open_nursery() as nursery:
            await nursery.start(upstream.serve)
            server = dns.EmbeddedDns(read_records, upstream_port=upstream.port, redirect=redirect)
            await nursery.start(server.run)
            await server.open(ASKER, ns, dns.ResolverConfig([upstream.address], ["corp.test"]))
            yield Env(server, ns, records), upstream
            await server.close(ASKER)
            assert server.serving() == []
            nursery.cancel_scope.cancel()
        assert threading.active_count() <= threads_before + 1  # trio's idle workers at most
    finally:
        with trio.CancelScope(shield=True):
            await netns.delete(netns_dir, "dnstest")
            await netns.release_dir(netns_dir)


def _a_answers(reply: bytes) -> tuple[int, list[str]]:
    """rcode and the A addresses of a reply built by build_response (answers after the question)."""
    header = w.parse_header(reply)
    _, pos = w.read_question(reply)
    ips = []
    for _ in range(header.ancount):
        _, pos = w.read_name(reply, pos)
        rtype, _, _, rdlen = struct.unpack_from("!HHIH", reply, pos)
        pos += 10
        if rtype == w.A:
            ips.append(socket.inet_ntoa(reply[pos:pos + rdlen]))
        pos += rdlen
    return header.rcode, ips


async def test_peers_resolve_by_name_alias_short_id_and_network(env: tuple[Env, Upstream]) -> None:
    e, upstream = env
    for name in ("web", "WEB.", "www", PEER[:12], "web.app", "web.corp.test", "web.app.corp.test."):
        reply = await e.ask(w.build_query(name, id=9))
        assert reply is not None and reply[:2] == b"\x00\x09"
        assert _a_answers(reply) == (w.NOERROR, ["10.99.0.3"]), name
    own = await e.ask(w.build_query("asker"))
    assert own is not None and _a_answers(own) == (w.NOERROR, ["10.99.0.2"])
    # AAAA of a known name: no data, not forwarded; PTR of a peer's address: name.network
    reply = await e.ask(w.build_query("web", w.AAAA))
    assert reply is not None and w.parse_header(reply).rcode == w.NOERROR and w.parse_header(reply).ancount == 0
    reply = await e.ask(w.build_query("3.0.99.10.in-addr.arpa", w.PTR))
    assert reply is not None and reply.endswith(w.encode_name("Web.app"))
    assert upstream.seen == []
    # TCP answers the same
    reply = await e.ask_tcp(w.build_query("www"))
    assert _a_answers(reply) == (w.NOERROR, ["10.99.0.3"])


async def test_names_outside_the_askers_networks_are_forwarded(env: tuple[Env, Upstream]) -> None:
    e, upstream = env
    started = time.monotonic()
    reply = await e.ask(w.build_query("stranger", id=77))
    assert reply is not None and w.parse_header(reply).rcode == w.NXDOMAIN and reply[:2] == b"\x00\x4d"
    assert time.monotonic() - started < dns.SERVER_TIMEOUT  # answered, not given up on after a timeout
    assert upstream.seen == ["stranger"]  # the default network's alias-free name was not asked
    reply = await e.ask_tcp(w.build_query("example.org"))
    assert w.parse_header(reply).rcode == w.NXDOMAIN and upstream.seen[-1] == "example.org"


async def test_upstream_answers_are_relayed_byte_for_byte(env: tuple[Env, Upstream]) -> None:
    e, upstream = env
    q = w.build_query("host.example", id=5)
    # an answer with a compression pointer to the question and an odd TTL: never rebuilt
    upstream.canned = (struct.pack("!6H", 5, w.QR | w.RD | w.RA, 1, 1, 0, 0) + q[12:]
                       + b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x01\x2c\x00\x04\xc0\x00\x02\x07")
    reply = await e.ask(q)
    assert reply == upstream.canned
    # a reply to another question is not relayed: the asker gets SERVFAIL instead
    upstream.canned = w.build_response(w.parse_query(w.build_query("other.example", id=5)), w.NOERROR,
                                       [w.a_record("192.0.2.9", 60)])
    reply = await e.ask(q, wait=5)
    assert reply is not None and w.parse_header(reply).rcode == w.SERVFAIL


async def test_no_upstream_gives_servfail_at_once(env: tuple[Env, Upstream]) -> None:
    e, upstream = env
    await e.server.open(ASKER, e.ns, dns.ResolverConfig(["127.0.0.1"]))  # nothing listens there on that port
    started = time.monotonic()
    reply = await e.ask(w.build_query("example.org"))
    assert reply is not None and w.parse_header(reply).rcode == w.SERVFAIL
    assert time.monotonic() - started < dns.SERVER_TIMEOUT  # the refusal counted, not a timeout
    await e.server.open(ASKER, e.ns, dns.ResolverConfig())
    reply = await e.ask(w.build_query("example.org"))
    assert reply is not None and w.parse_header(reply).rcode == w.SERVFAIL


async def test_hostile_packets_do_not_stop_the_server(env: tuple[Env, Upstream]) -> None:
    e, upstream = env
    rng = random.Random(1)
    for _ in range(50):
        await e.ask(bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 80))), wait=0.01)
    assert await e.ask(b"\x12\x34\x01", wait=0.2) is None  # a truncated header: dropped
    zero = await e.ask(struct.pack("!6H", 0x4242, w.RD, 0, 0, 0, 0))  # no question: FORMERR
    assert zero is not None and zero[:2] == b"\x42\x42" and w.parse_header(zero).rcode == w.FORMERR
    loop = struct.pack("!6H", 1, 0, 1, 0, 0, 0) + b"\x01a\xc0\x0c\x00\x01\x00\x01"
    reply = await e.ask(loop)
    assert reply is not None and w.parse_header(reply).rcode == w.FORMERR
    # a TCP client that sends half a message and leaves
    with e.client(socket.SOCK_STREAM) as sock:
        await sock.connect((dns.ADDRESS, dns.PORT))
        await sock.send(b"\x00\x30\x12")
    reply = await e.ask(w.build_query("web"))
    assert reply is not None and _a_answers(reply) == (w.NOERROR, ["10.99.0.3"])


async def test_names_follow_the_records(env: tuple[Env, Upstream]) -> None:
    e, upstream = env
    reply = await e.ask(w.build_query("www"))
    assert reply is not None and _a_answers(reply)[1] == ["10.99.0.3"]
    e.records[:] = [r for r in e.records if r.container_id != PEER]  # the peer left
    reply = await e.ask(w.build_query("www"))
    assert reply is not None and _a_answers(reply)[1] == ["10.99.0.3"]  # cached until told
    e.server.invalidate()
    reply = await e.ask(w.build_query("www"))
    assert reply is not None and w.parse_header(reply).rcode == w.NXDOMAIN  # forwarded now


async def test_closing_frees_the_address(env: tuple[Env, Upstream]) -> None:
    e, _ = env
    await e.server.close(ASKER)
    assert await e.ask(w.build_query("web"), wait=0.3) is None
    udp, tcp = dns.run_in_netns(e.ns, lambda: dns._bind_sockets(dns.ADDRESS, dns.PORT))
    udp.close()
    tcp.close()
    inside = dns.run_in_netns(e.ns, lambda: os.readlink("/proc/thread-self/ns/net"))
    assert inside == f"net:[{os.stat(e.ns).st_ino}]" != os.readlink("/proc/self/ns/net")
    assert os.readlink("/proc/thread-self/ns/net") == os.readlink("/proc/self/ns/net")
    with pytest.raises(FileNotFoundError):
        dns.run_in_netns(e.ns.parent / "missing", lambda: None)


def test_link_aliases_resolve_for_the_linking_container_only() -> None:
    """docker's --link on a user network: ALIAS stands for TARGET's name, for the asker
    alone, on its networks where TARGET is (a target elsewhere, or not there yet: nothing)."""
    table = dns.endpoints_from(_records())
    links = {"db": "web", "later": "nosuch", "far": "stranger"}
    assert dns.resolve(table, ASKER, "DB", links) == ["10.99.0.3"]
    assert dns.resolve(table, ASKER, "db.app", links) == ["10.99.0.3"]
    assert dns.resolve_searched(table, ASKER, "db.corp.example", ["corp.example"], links) == ["10.99.0.3"]
    assert dns.resolve(table, ASKER, "db") == []  # without the asker's links
    assert dns.resolve(table, ASKER, "later", links) == []
    assert dns.resolve(table, ASKER, "far", links) == []  # stranger shares no network
    assert dns.resolve(table, ASKER, "web", links) == ["10.99.0.3"]  # the real name still works


def test_links_are_kept_for_a_daemon_restart(tmp_path: Path) -> None:
    config = dns.ResolverConfig(["192.0.2.1"], ["corp.example"], 4000, 4001, {"db": "web"})
    dns.write_state(tmp_path, config)
    assert dns.read_state(tmp_path) == config
