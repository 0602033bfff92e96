"""docker's embedded DNS server for containers on user-defined networks.

Each such container gets its own resolver at 127.0.0.11:53 (UDP and TCP) inside its network
namespace, and ``nameserver 127.0.0.11`` / ``options ndots:0`` in its /etc/resolv.conf
(etc_files). The sockets are opened from a short-lived thread that enters the namespace
with setns(2) and leaves it again (a socket keeps the namespace it was made in), and are
served from the daemon's trio loop. Because a socket is per container, the resolver knows
who asks, and answers only names of containers that share a user-defined network with the
asker: their names, network aliases and short ids (and ``name.network``), A records with
docker's TTL of 600 s, no AAAA (the networks are IPv4 only), PTR for their addresses.

Everything else is forwarded verbatim, from the daemon's own namespace (so the host's
loopback resolvers work, as docker's do), to the container's ``--dns`` servers or else the
nameservers of the daemon's resolv.conf (``--resolv-conf``, /etc/resolv.conf by default);
the first answer that matches the question is relayed untouched, SERVFAIL when none does
in time. Malformed packets are dropped; a well-formed header with other than one question
gets FORMERR.

The names come from the CNI attachment records, the same state /etc/hosts files are built
from; the table is re-read after ``invalidate`` (called wherever the hosts files are
refreshed). While the daemon is down, lookups fail but /etc/hosts still names every peer.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import logging
import socket
import struct
import threading
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import attrs
import trio

from engine.network import dns_wire as w
from engine.network import netns
from engine.network.networks import DEFAULT_NETWORK

log = logging.getLogger("engine.network.dns")

ADDRESS = "127.0.0.11"
PORT = 53
TTL = 600  # docker's
UPSTREAM_PORT = 53
SERVER_TIMEOUT = 2.0  # per upstream server; a client's own timeout is 5 s (glibc, busybox)
MAX_UPSTREAMS = 3  # as many as resolv.conf's MAXNS
MAX_INFLIGHT = 256  # UDP queries being answered at once per container; more are dropped
MAX_TCP_CONNECTIONS = 32
TCP_IDLE = 10.0  # seconds a TCP client may stay silent between queries
NAT_CHAIN = "ENGINE_DNS"  # in the container's own namespace, so the name is ours alone
STATE_FILE = "dns.json"  # in the container's etc dir: its upstreams, for a daemon restart

T = TypeVar("T")


# --- entering a network namespace ------------------------------------------------------------


def run_in_netns(netns_path: str | Path, fn: Callable[[], T]) -> T:
    """Run ``fn`` in a fresh thread that has entered the network namespace at ``netns_path``
    (blocking: call it through trio.to_thread). The thread leaves the namespace before it
    ends; it is a thread of its own, not a pool's, so even a failed return cannot leave a
    worker thread of the daemon in a container's namespace."""
    outcome: list[Any] = []

    def body() -> None:
        try:
            outcome.append(("ok", netns.call_in_netns(netns_path, fn)))
        except BaseException as e:  # noqa: BLE001 - handed to the caller below
            outcome[:] = [("error", e)]

    thread = threading.Thread(target=body, name="engine-netns", daemon=True)
    thread.start()
    thread.join()
    kind, value = outcome[0]
    if kind == "error":
        raise value
    return value  # type: ignore[no-any-return]


def _bind_sockets(address: str, udp_port: int, tcp_port: int | None = None) -> tuple[socket.socket, socket.socket]:
    """The UDP socket and the TCP listener at ``address`` (port 0: one the kernel picks), in
    the current thread's namespace. lo must be up: the CNI loopback plugin runs before any
    attachment."""
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        udp.bind((address, udp_port))
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        tcp.bind((address, udp_port if tcp_port is None else tcp_port))
        tcp.listen(64)
    except BaseException:
        udp.close()
        tcp.close()
        raise
    return udp, tcp


def nat_rules(address: str, port: int, udp_port: int, tcp_port: int, *, with_jump: bool) -> bytes:
    """iptables-restore input sending ``address:port`` to the resolver's own ports (docker's
    DOCKER_OUTPUT). Declaring the chain flushes it; the jump from OUTPUT is only written
    into a fresh namespace (a second one would be a duplicate)."""
    lines = ["*nat", f":{NAT_CHAIN} - [0:0]"]
    if with_jump:
        lines.append(f"-A OUTPUT -d {address}/32 -j {NAT_CHAIN}")
    for proto, target in (("udp", udp_port), ("tcp", tcp_port)):
        lines.append(f"-A {NAT_CHAIN} -d {address}/32 -p {proto} -m {proto} --dport {port} "
                     f"-j DNAT --to-destination {address}:{target}")
    lines.append("COMMIT")
    return ("\n".join(lines) + "\n").encode()


async def install_redirect(netns_path: str | Path, address: str, port: int, udp_port: int,
                           tcp_port: int, *, fresh: bool, live: bool = False) -> None:
    """The NAT rules in the container's namespace. ``fresh``: the namespace was just made
    and its nat table is empty, so it is written whole; otherwise only our chain is
    replaced (a privileged container's own nat rules stay). ``live``: a running
    container's namespace gets its first resolver (a connect): its own rules stay, and the
    jump from OUTPUT is added unless a resolver of an earlier daemon left it."""
    from engine.network._proc import run

    nsenter = ["nsenter", f"--net={netns_path}"]
    with_jump = fresh
    if live and not fresh:
        check = await run([*nsenter, "iptables", "-w", "5", "-t", "nat", "-C", "OUTPUT",
                           "-d", f"{address}/32", "-j", NAT_CHAIN], check=False)
        with_jump = check.returncode != 0
    argv = [*nsenter, "iptables-restore", "-w", "5"]
    if not fresh:
        argv.append("--noflush")
    await run(argv, stdin=nat_rules(address, port, udp_port, tcp_port, with_jump=with_jump))


# --- who is who ----------------------------------------------------------------------------


@attrs.frozen
class Endpoint:
    """One container's address on one user-defined network, and the names it has there."""

    container_id: str
    network: str
    ifname: str
    ip: str
    name: str
    names: frozenset[str]  # lowercase: name, aliases, short id


def endpoints_from(records: Sequence[Any]) -> list[Endpoint]:
    """Endpoints of the attachment records (engine.network.cni.Attachment) that resolve:
    complete ones on user-defined networks (docker's default network has no DNS)."""
    found = []
    for rec in records:
        if rec.result is None or not rec.ip or rec.network_name == DEFAULT_NETWORK:
            continue
        names = [rec.name, *rec.aliases, rec.container_id[:12]]
        found.append(Endpoint(rec.container_id, rec.network_name, rec.ifname, rec.ip, rec.name,
                              frozenset(n.lower() for n in names if n)))
    return sorted(found, key=lambda e: (e.container_id, e.ifname))


def _asker_networks(table: Sequence[Endpoint], asker: str) -> list[str]:
    return list(dict.fromkeys(e.network for e in table if e.container_id == asker))


def _lookup(table: Sequence[Endpoint], network: str, name: str, links: Mapping[str, str]) -> list[str]:
    # A link alias stands for its target's name (docker's endpoint aliases), for the
    # linking container alone and on each of its networks where the target is.
    target = links.get(name)
    wanted = target.lower() if target else name
    return list(dict.fromkeys(e.ip for e in table if e.network == network and wanted in e.names))


def resolve(table: Sequence[Endpoint], asker: str, name: str,
            links: Mapping[str, str] | None = None) -> list[str]:
    """The addresses ``name`` has for ``asker``: on the first of the asker's networks (by
    interface order) where it is known, as docker answers. ``name.network`` looks in that
    network only. ``links``: the asker's ``--link`` aliases (lowercase) and their targets."""
    name = name.lower().rstrip(".")
    links = links or {}
    networks = _asker_networks(table, asker)
    for network in networks:
        suffix = "." + network.lower()
        if name.endswith(suffix) and len(name) > len(suffix):
            ips = _lookup(table, network, name[: -len(suffix)], links)
            if ips:
                return ips
    for network in networks:
        ips = _lookup(table, network, name, links)
        if ips:
            return ips
    return []


def resolve_searched(table: Sequence[Endpoint], asker: str, name: str, search: Sequence[str],
                     links: Mapping[str, str] | None = None) -> list[str]:
    """``resolve``, then with one of the asker's search domains taken off the end: busybox's
    nslookup (and musl) ask ``web.corp.example`` only, never ``web``, when resolv.conf has
    ``search corp.example``, whatever ndots says."""
    ips = resolve(table, asker, name, links)
    name = name.lower().rstrip(".")
    for domain in search:
        suffix = "." + domain.lower().strip(".")
        if not ips and suffix != "." and name.endswith(suffix) and len(name) > len(suffix):
            ips = resolve(table, asker, name[: -len(suffix)], links)
    return ips


def reverse(table: Sequence[Endpoint], asker: str, ip: str) -> str | None:
    """``name.network`` of the container at ``ip`` on a network the asker is on."""
    for network in _asker_networks(table, asker):
        for e in table:
            if e.network == network and e.ip == ip and e.name:
                return f"{e.name}.{network}"
    return None


# --- upstream servers ----------------------------------------------------------------------


def nameservers_of(resolv_conf: Path) -> list[str]:
    """Every nameserver of a resolv.conf, loopback ones included: queries are forwarded
    from the daemon's namespace, where the host's loopback is reachable (blocking)."""
    found = []
    try:
        text = resolv_conf.read_text()
    except FileNotFoundError:
        return []
    for line in text.splitlines():
        words = line.split("#", 1)[0].split(";", 1)[0].split()
        if len(words) >= 2 and words[0] == "nameserver":
            try:
                found.append(str(ipaddress.ip_address(words[1])))
            except ValueError:
                continue
    return found[:MAX_UPSTREAMS]


@attrs.frozen
class ResolverConfig:
    """What one container's resolver needs besides the names: where to forward, and the
    search domains of its resolv.conf. Recorded in its etc dir for a daemon restart."""

    upstreams: list[str] = attrs.field(factory=list)
    search: list[str] = attrs.field(factory=list)
    udp_port: int = 0  # where the resolver really listens (behind the NAT rules); 0: unknown
    tcp_port: int = 0
    # docker's legacy links on user networks: alias (lowercase) -> the linked container's
    # name as given, answered for this container only
    links: dict[str, str] = attrs.field(factory=dict)


def write_state(etc_dir: Path, config: ResolverConfig) -> None:
    etc_dir.mkdir(parents=True, exist_ok=True)
    (etc_dir / STATE_FILE).write_text(json.dumps(attrs.asdict(config)))


def read_state(etc_dir: Path) -> ResolverConfig | None:
    """The resolver recorded at the container's start; None when it has no embedded DNS."""
    try:
        data = json.loads((etc_dir / STATE_FILE).read_text())
        return ResolverConfig([str(s) for s in data["upstreams"]], [str(s) for s in data.get("search", [])],
                              int(data.get("udp_port", 0)), int(data.get("tcp_port", 0)),
                              {str(k): str(v) for k, v in (data.get("links") or {}).items()})
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError, AttributeError):
        log.warning("unreadable %s; forwarding nowhere", etc_dir / STATE_FILE)
        return ResolverConfig()


def _same_question(reply: bytes, query: w.Query) -> bool:
    try:
        header = w.parse_header(reply)
        if not header.is_response or header.id != query.id or header.qdcount != 1:
            return False
        question, _ = w.read_question(reply)
    except w.MalformedMessage:
        return False
    asked = query.question
    return (question.name, question.qtype, question.qclass) == (asked.name, asked.qtype, asked.qclass)


async def _forward_udp(server: str, port: int, data: bytes, query: w.Query) -> bytes | None:
    family = socket.AF_INET6 if ":" in server else socket.AF_INET
    with trio.socket.socket(family, socket.SOCK_DGRAM) as sock:
        await sock.connect((server, port))  # a fresh random source port per query
        await sock.send(data)
        while True:
            reply = await sock.recv(65535)
            if _same_question(reply, query):  # anything else is stray or spoofed: wait on
                return reply


async def _receive_exactly(stream: trio.abc.ReceiveStream, size: int) -> bytes:
    buf = b""
    while len(buf) < size:
        chunk = await stream.receive_some(size - len(buf))
        if not chunk:
            raise EOFError("connection closed mid-message")
        buf += chunk
    return buf


async def _read_framed(stream: trio.abc.ReceiveStream) -> bytes:
    (size,) = struct.unpack("!H", await _receive_exactly(stream, 2))
    return await _receive_exactly(stream, size)


async def _forward_tcp(server: str, port: int, data: bytes, query: w.Query) -> bytes | None:
    stream = await trio.open_tcp_stream(server, port)
    async with stream:
        await stream.send_all(struct.pack("!H", len(data)) + data)
        reply = await _read_framed(stream)
    return reply if _same_question(reply, query) else None


# --- one container's resolver --------------------------------------------------------------


@attrs.define(eq=False)
class _Resolver:
    container_id: str
    config: ResolverConfig
    udp: trio.socket.SocketType
    tcp: trio.socket.SocketType
    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    inflight: int = 0
    tcp_clients: int = 0


class EmbeddedDns:
    """The per-container resolvers of one daemon. ``run`` (started in the daemon's nursery)
    owns their tasks; ``open``/``close`` follow the containers' starts and stops."""

    def __init__(self, records: Callable[[], Awaitable[Sequence[Any]]], *,
                 address: str = ADDRESS, port: int = PORT, upstream_port: int = UPSTREAM_PORT,
                 redirect: bool = True) -> None:
        self._records = records  # the CNI attachment records (cni.attachments)
        self.address = address
        self.port = port
        # As docker: listen on ports of our own and DNAT address:port to them, so that the
        # container may still run a DNS server of its own on :53; False binds port itself.
        self.redirect = redirect
        self.upstream_port = upstream_port
        self._nursery: trio.Nursery | None = None
        self._resolvers: dict[str, _Resolver] = {}
        self._table: list[Endpoint] | None = None
        self._generation = 0
        self._table_lock = trio.Lock()

    @property
    def running(self) -> bool:
        return self._nursery is not None

    def serving(self) -> list[str]:
        return sorted(self._resolvers)

    def serves(self, container_id: str) -> bool:
        return container_id in self._resolvers

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started(self)
                await trio.sleep_forever()
        finally:
            self._nursery = None
            for resolver in self._resolvers.values():
                resolver.udp.close()
                resolver.tcp.close()
            self._resolvers.clear()

    def invalidate(self) -> None:
        """Names changed (a join, a leave): the next query re-reads the records."""
        self._generation += 1
        self._table = None

    async def table(self) -> list[Endpoint]:
        async with self._table_lock:
            while self._table is None:
                generation = self._generation
                table = endpoints_from(await self._records())
                if generation == self._generation:  # no change while reading
                    self._table = table
            return self._table

    # --- lifecycle -----------------------------------------------------------------------

    async def open(self, container_id: str, netns_path: str | Path, config: ResolverConfig, *,
                   fresh: bool = True, live: bool = False) -> ResolverConfig:
        """Serve 127.0.0.11:53 in the container's namespace (replacing a resolver it has).

        ``fresh``: the namespace is new (a start): new ports and NAT rules. Otherwise (a
        daemon restart) the ports recorded in ``config`` are bound again, so the rules
        already in the namespace lead to them. ``live``: the namespace is a running
        container's, without a resolver so far (a connect to a user network): new ports,
        and the rules added beside the container's own. Returns the config with the ports
        in use, to be recorded for the next restart."""
        fresh = fresh or live
        if self._nursery is None:
            raise RuntimeError("the embedded DNS server is not running")
        await self.close(container_id)
        address, port, redirect = self.address, self.port, self.redirect
        if redirect and not fresh and not config.udp_port:
            redirect = False  # recorded without ports: it was bound to :53 itself, rules-less

        def bind() -> tuple[socket.socket, socket.socket, bool]:
            if not redirect:
                return (*_bind_sockets(address, port), True)
            if not fresh:
                try:
                    return (*_bind_sockets(address, config.udp_port, config.tcp_port), True)
                except OSError:
                    pass  # taken meanwhile: new ports, and the chain rewritten for them
            return (*_bind_sockets(address, 0, 0), False)

        udp, tcp, kept = await trio.to_thread.run_sync(run_in_netns, netns_path, bind)
        try:
            udp_port, tcp_port = udp.getsockname()[1], tcp.getsockname()[1]
            if redirect and not kept:
                await install_redirect(netns_path, address, port, udp_port, tcp_port,
                                       fresh=fresh and not live, live=live)
        except BaseException:
            udp.close()
            tcp.close()
            raise
        config = attrs.evolve(config, upstreams=config.upstreams[:MAX_UPSTREAMS],
                              udp_port=udp_port if redirect else 0, tcp_port=tcp_port if redirect else 0)
        resolver = _Resolver(container_id, config,
                             trio.socket.from_stdlib_socket(udp), trio.socket.from_stdlib_socket(tcp))
        self._resolvers[container_id] = resolver
        self._nursery.start_soon(self._serve, resolver)
        return config

    async def close(self, container_id: str) -> None:
        resolver = self._resolvers.pop(container_id, None)
        if resolver is not None:
            resolver.scope.cancel()
            resolver.udp.close()
            resolver.tcp.close()
        await trio.lowlevel.checkpoint()

    async def _serve(self, resolver: _Resolver) -> None:
        with resolver.scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._serve_udp, resolver, nursery)
                nursery.start_soon(self._serve_tcp, resolver, nursery)

    async def _serve_udp(self, resolver: _Resolver, nursery: trio.Nursery) -> None:
        while True:
            try:
                data, peer = await resolver.udp.recvfrom(65535)
            except trio.ClosedResourceError:
                return
            except OSError as e:
                if e.errno == errno.EBADF:
                    return  # closed
                continue  # e.g. ECONNREFUSED from an earlier answer to a gone client
            if resolver.inflight >= MAX_INFLIGHT:
                continue  # flooded: dropping is what a busy server does
            resolver.inflight += 1
            nursery.start_soon(self._answer_udp, resolver, data, peer)

    async def _answer_udp(self, resolver: _Resolver, data: bytes, peer: Any) -> None:
        try:
            reply = await self.answer(resolver.container_id, resolver.config, data, tcp=False)
            if reply is not None:
                await resolver.udp.sendto(reply, peer)
        except OSError as e:
            log.debug("container %s: DNS reply to %s failed: %s", resolver.container_id[:12], peer, e)
        finally:
            resolver.inflight -= 1

    async def _serve_tcp(self, resolver: _Resolver, nursery: trio.Nursery) -> None:
        while True:
            try:
                conn, _ = await resolver.tcp.accept()
            except trio.ClosedResourceError:
                return
            except OSError as e:
                if e.errno == errno.EBADF:
                    return
                continue
            if resolver.tcp_clients >= MAX_TCP_CONNECTIONS:
                conn.close()
                continue
            resolver.tcp_clients += 1
            nursery.start_soon(self._serve_connection, resolver, trio.SocketStream(conn))

    async def _serve_connection(self, resolver: _Resolver, stream: trio.SocketStream) -> None:
        try:
            async with stream:
                while True:
                    with trio.move_on_after(TCP_IDLE) as idle:
                        data = await _read_framed(stream)
                    if idle.cancelled_caught:
                        return
                    reply = await self.answer(resolver.container_id, resolver.config, data, tcp=True)
                    if reply is None:
                        return  # a malformed message: the stream cannot be trusted further
                    await stream.send_all(struct.pack("!H", len(reply)) + reply)
        except (EOFError, OSError, trio.BrokenResourceError, trio.ClosedResourceError):
            return
        finally:
            resolver.tcp_clients -= 1

    # --- answering -----------------------------------------------------------------------

    async def answer(self, asker: str, config: ResolverConfig, data: bytes, *, tcp: bool) -> bytes | None:
        """The reply to one DNS message from container ``asker``, None to drop it."""
        try:
            query = w.parse_query(data)
        except w.MalformedMessage:
            return _formerr(data)
        limit = None if tcp else query.udp_limit()
        if query.header.opcode != 0:
            return w.build_response(query, w.NOTIMP, authoritative=False)
        if not query.edns_ok:
            return w.build_response(query, w.FORMERR, authoritative=False)
        question = query.question
        if question.qclass == w.IN:
            local = await self._answer_locally(asker, config, query, limit)
            if local is not None:
                return local
        return await self._forward(config.upstreams, data, query, tcp=tcp)

    async def _answer_locally(self, asker: str, config: ResolverConfig, query: w.Query,
                              limit: int | None) -> bytes | None:
        question = query.question
        table = await self.table()
        if question.qtype == w.PTR:
            ip = w.reverse_ipv4(question.name)
            target = reverse(table, asker, ip) if ip else None
            if target is None:
                return None
            return w.build_response(query, w.NOERROR, [w.ptr_record(target, TTL)], limit=limit)
        ips = resolve_searched(table, asker, question.name, config.search, config.links)
        if not ips:
            return None
        records = []
        if question.qtype in (w.A, w.ANY):
            records = [w.a_record(ip, TTL) for ip in ips if ":" not in ip]
        elif question.qtype == w.AAAA:
            records = [w.aaaa_record(ip, TTL) for ip in ips if ":" in ip]
        # Any other type of a known name: no such data (NOERROR, no answer), never forwarded.
        return w.build_response(query, w.NOERROR, records, limit=limit)

    async def _forward(self, upstreams: Sequence[str], data: bytes, query: w.Query, *, tcp: bool) -> bytes:
        forward = _forward_tcp if tcp else _forward_udp
        for server in upstreams:
            with trio.move_on_after(SERVER_TIMEOUT):
                try:
                    reply = await forward(server, self.upstream_port, data, query)
                except (OSError, EOFError, trio.BrokenResourceError) as e:
                    log.debug("upstream %s: %s", server, e)  # refused, unreachable: the next one
                    continue
                if reply is not None:
                    return reply
        return w.build_response(query, w.SERVFAIL, authoritative=False)


def _formerr(data: bytes) -> bytes | None:
    """FORMERR for a query whose header reads but whose body does not follow it (no
    question, two questions...); None (drop) for anything else: it may not even be DNS."""
    try:
        header = w.parse_header(data)
    except w.MalformedMessage:
        return None
    if header.is_response or header.opcode != 0:
        return None
    flags = w.QR | (header.flags & w.RD) | w.RA | w.FORMERR
    return struct.pack("!6H", header.id, flags, 0, 0, 0, 0)
