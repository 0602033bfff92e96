"""Networking for containers: the daemon's ``app.services.network`` and the container
actors' ``NetworkProvider``.

``prepare_config`` runs at create (network mode and published ports are checked and fixed
then, so ``ps``/``port`` show real host ports). The container's actor calls ``setup`` at
every start before the OCI bundle is written, ``teardown`` at every exit, stop and removal,
and ``connect``/``disconnect`` for ``engctl network connect|disconnect``: this module
never writes a container's status, the actor records what these return.

Network modes (docker's): ``bridge`` (the default network), a user network's name or id,
``none`` (a fresh namespace with only loopback), ``host`` (the host's namespace) and
``container:<id>`` (another container's namespace).

Which networks a container joins is ``config.network_mode`` until the first
connect/disconnect; from then on a small file in the container's directory
(``networks.json``) owned by this module holds the list, so the actor's config file is never
written from outside the actor.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Protocol

import attrs
import trio

from engine.actors.model import ContainerConfig, ContainerStatus, primary_ip
from engine.convert import disk
from engine.errors import (
    AlreadyExists,
    Conflict,
    EngineError,
    InvalidArgument,
    NotFound,
    RuntimeFailure,
)
from engine.network import cni, dns, etc_files, mac_address, netns, ports, static_ip
from engine.network.networks import DEFAULT_NETWORK, Network, NetworkStore
from engine.network.reconcile import ReconcileReport, reconcile
from engine.network.settings import NetworkSettings, claim_bridge
from engine.store.atomic import read_json, write_json_atomic
from engine.store.layout import Layout

log = logging.getLogger("engine.network")

CONTAINER_PREFIX = "container:"
# The CRI's pods (engine.cri): their namespace, CNI attachment and /etc files are the CRI's.
EXTERNAL = "external"
ETC_DIR = "net"  # under the container's run dir: its generated /etc files
NETWORKS_FILE = "networks.json"  # under the container's dir, after a connect/disconnect
LINKS_FILE = "links.json"  # under the container's dir: its --link aliases on user networks
HOST_HOSTS = Path("/etc/hosts")
_KEEP_STATES = {"running", "paused"}
CHOSEN_KEPT = 300.0  # seconds a chosen host port stays held for a container being created


@attrs.frozen
class Membership:
    """One network a container joins, with the aliases and the address (``--ip``, "" for
    one host-local chooses) and MAC address (``--mac-address``, "" for one the bridge plugin
    chooses) it has there."""

    network: str  # name (ids are resolved to names at create/connect)
    aliases: list[str] = attrs.field(factory=list)
    ipv4_address: str = ""
    mac_address: str = ""


@attrs.frozen
class _Memberships:
    networks: list[Membership] = attrs.field(factory=list)


class ContainerLookup(Protocol):
    """Other containers, for ``--network container:NAME`` (read only)."""

    def get(self, ref: str) -> Any: ...

    def all(self) -> list[Any]: ...


# --- network modes ---------------------------------------------------------------------------


def mode_kind(mode: str) -> str:
    """bridge (any CNI network), none, host or container."""
    if mode in ("none", "host", EXTERNAL):
        return mode
    if mode.startswith(CONTAINER_PREFIX):
        return "container"
    return "bridge"


def _mount(source: Path, destination: str) -> dict[str, Any]:
    return {"source": str(source), "destination": destination, "read_only": False}


def _host_hosts_text(extra: list[tuple[str, str]]) -> str:
    """The host's /etc/hosts plus ``extra`` (blocking: run it in a thread)."""
    try:
        text = HOST_HOSTS.read_text()
    except FileNotFoundError:
        text = "127.0.0.1\tlocalhost\n"
    if text and not text.endswith("\n"):
        text += "\n"
    return text + "".join(f"{ip}\t{name}\n" for name, ip in extra)


def _write_host_hosts(path: Path, extra: list[tuple[str, str]]) -> None:
    # Read and written in one worker-thread trip: /etc/hosts is a file like any other.
    _write_text(path, _host_hosts_text(extra))


def _write_text(path: Path, text: str) -> None:
    # In place, like etc_files: a running container's bind mount keeps the inode.
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


class EventSink(Protocol):
    def emit(self, type: str, action: str, id: str, **attributes: Any) -> Any: ...


# --- the service -----------------------------------------------------------------------------


class ContainerNetworking:
    """Container networking over the CNI plugins; one per daemon."""

    def __init__(self, layout: Layout, containers: Callable[[], ContainerLookup], *,
                 plugin_dir: Path = cni.CNI_PATH) -> None:
        self.layout = layout
        self.containers = containers  # the supervisor, once it is up (container: mode)
        self.store = NetworkStore(layout.networks_dir)
        self.netns_dir: Path = layout.netns_dir
        self.plugin_dir = plugin_dir
        self._locks: dict[str, trio.Lock] = {}
        # a start with published ports checks and records them under it (docker's port allocator)
        self._ports_lock = trio.Lock()
        # host ports chosen for -p CTR / -P lately (at create): taken before their container
        # is registered, let alone started; (protocol, port) -> when
        self._choosing = trio.Lock()
        self._chosen: dict[tuple[str, int], float] = {}
        # docker's embedded DNS on user networks; off until start_dns (then resolv.conf
        # points at it), so a networking without a daemon nursery keeps /etc/hosts only.
        self.dns = dns.EmbeddedDns(lambda: cni.attachments(self.store))
        self.resolv_conf: Path = etc_files.HOST_RESOLV_CONF  # the daemon's --resolv-conf
        # the daemon's event bus (engine.actors.events), told of docker's network connect
        # and disconnect events; None: nobody listens
        self.events: EventSink | None = None

    @asynccontextmanager
    async def _locked(self, container_id: str) -> Any:
        # setup/teardown/connect/disconnect of one container never interleave.
        lock = self._locks.setdefault(container_id, trio.Lock())
        async with lock:
            yield

    def etc_dir(self, container_id: str) -> Path:
        return self.layout.run_container_dir(container_id) / ETC_DIR

    def _containers(self) -> ContainerLookup:
        return self.containers()

    # --- create --------------------------------------------------------------------------

    async def prepare_config(self, config: ContainerConfig, publish: list[str]) -> None:
        """Check the network mode and fix the published ports (host ports chosen now)."""
        mode = config.network_mode or DEFAULT_NETWORK
        if mode == "default":
            mode = DEFAULT_NETWORK
        kind = mode_kind(mode)
        config.ipv4_address = static_ip.parse(config.ipv4_address)
        if config.ipv4_address and kind != "bridge":
            raise InvalidArgument(static_ip.ON_PREDEFINED)
        config.mac_address = mac_address.parse(config.mac_address)
        if config.mac_address and kind in ("host", "container"):
            raise InvalidArgument(mac_address.CONFLICTING_MODE)
        if kind == "none":
            config.mac_address = ""  # dockerd takes it and has no interface to give it to
        if kind == "container":
            mode = CONTAINER_PREFIX + self._resolve_container(mode.removeprefix(CONTAINER_PREFIX), config)
        elif kind == "bridge":
            mode = (await self.store.get(mode)).name
        if kind != "bridge":
            if publish or config.ports:
                raise InvalidArgument(
                    f"-p/--publish cannot be used with --network {config.network_mode}: the "
                    "container has no network of its own to publish from; use a bridge network"
                )
            if config.aliases:
                raise InvalidArgument(
                    f"--network-alias needs a bridge or user-defined network, not {config.network_mode!r}"
                )
            config.network_mode = mode
            config.networks = []
            return
        exposed = list((config.image_config or {}).get("ExposedPorts") or {})
        async with self._choosing:
            held = await self._held_ports(config.id) if publish or config.publish_all else None
            mappings = await trio.to_thread.run_sync(
                lambda: ports.parse_all(publish, exposed, config.publish_all, avoid=held))
            now = time.monotonic()
            self._chosen.update({(m.protocol, m.host_port): now for m in mappings})
        config.network_mode = mode
        config.networks = [mode]
        config.ports = [*config.ports, *mappings]

    async def _held_ports(self, container_id: str) -> ports.Held:
        """The host ports a chosen one must not be (docker's allocator keeps them apart):
        those other containers publish now or will at their start, and those chosen lately
        for containers not registered yet."""
        now = time.monotonic()
        self._chosen = {key: when for key, when in self._chosen.items() if now - when < CHOSEN_KEPT}
        held: ports.Held = set(self._chosen)
        for record in await cni.attachments(self.store):
            if record.container_id != container_id:
                held.update((m.protocol, m.host_port) for m in map(ports.from_cni, record.port_mappings))
        try:
            others = self._containers().all()
        except EngineError:  # no supervisor yet (in-process tests)
            others = []
        for actor in others:
            if actor.config.id != container_id:
                held.update((m.protocol, m.host_port) for m in actor.config.ports)
        return held

    def _resolve_container(self, ref: str, config: ContainerConfig) -> str:
        if not ref:
            raise InvalidArgument("--network container: needs a container name or id, e.g. container:web")
        other = self._containers().get(ref)
        if config.id and other.id == config.id:
            raise InvalidArgument("a container cannot share its own network namespace")
        mode = other.config.network_mode
        if mode.startswith(CONTAINER_PREFIX):
            # Chains would break when the middle one stops: join the owner directly.
            return str(mode.removeprefix(CONTAINER_PREFIX))
        return str(other.id)

    # --- which networks ------------------------------------------------------------------

    def _memberships_path(self, container_id: str) -> Path:
        return self.layout.container_dir(container_id) / NETWORKS_FILE

    def _read_memberships(self, config: ContainerConfig) -> list[Membership]:
        path = self._memberships_path(config.id)
        try:
            return disk.structure(read_json(path), _Memberships).networks
        except FileNotFoundError:
            pass
        if mode_kind(config.network_mode) != "bridge":
            return []
        names = config.networks or [config.network_mode]
        return [Membership(n, list(config.aliases) if i == 0 else [], config.ipv4_address if i == 0 else "",
                           config.mac_address if i == 0 else "")
                for i, n in enumerate(names)]

    def _write_memberships(self, container_id: str, members: list[Membership]) -> None:
        write_json_atomic(self._memberships_path(container_id),
                          disk.unstructure(_Memberships(members)))

    async def memberships(self, config: ContainerConfig) -> list[Membership]:
        return await trio.to_thread.run_sync(self._read_memberships, config)

    # --- start -----------------------------------------------------------------------------

    async def setup(self, config: ContainerConfig, status: ContainerStatus) -> None:
        """Give the container its namespace, networks and /etc files (at every start)."""
        async with self._locked(config.id):
            kind = mode_kind(config.network_mode)
            if kind == EXTERNAL:
                status.network_details = {}
                status.ip_address = ""
                return
            if kind == "bridge":
                await self._detach_quiet(config.id)  # a start that failed half-way before
            try:
                if kind == "host":
                    details = await self._setup_host(config)
                elif kind == "container":
                    details = await self._setup_shared(config)
                elif kind == "none":
                    details = await self._setup_private(config)
                else:
                    details = await self._setup_own(config)
            except BaseException:
                with trio.CancelScope(shield=True):
                    await self._teardown_quiet(config)
                raise
            status.network_details = details
            status.ip_address = primary_ip(details)

    async def _setup_own(self, config: ContainerConfig) -> dict[str, Any]:
        ns = await netns.create(self.netns_dir, config.id)
        etc_dir = self.etc_dir(config.id)
        members = await self.memberships(config)
        if not members:  # attach brings loopback up itself
            await cni.setup_loopback(ns, plugin_dir=self.plugin_dir)
        details: dict[str, Any] = {"_netns": str(ns)}
        results: list[cni.AttachResult] = []
        for index, member in enumerate(members):
            network = await self._network_for_start(member.network, config)
            if member.ipv4_address:
                await self._check_static_ip(network, member.ipv4_address, config.id)
            publishing = index == 0 and bool(config.ports)
            async with self._ports_lock if publishing else _no_lock():
                if publishing:
                    await self._check_ports_free(config)
                res = await self._attach(
                    network, config.id, ns, ifname=f"eth{index}",
                    port_mappings=config.ports if index == 0 else (),
                    name=config.name, aliases=member.aliases, etc_dir=etc_dir,
                    ip=member.ipv4_address, mac=member.mac_address,
                )
            results.append(res)
            details[network.name] = _endpoint(res, member.ipv4_address)
            self._tell("connect", network, config.id)
        gateway = results[0].gateway if results else ""
        embedded = self.dns.running and any(r.network != DEFAULT_NETWORK for r in results)
        files = await etc_files.write_etc_files(
            etc_dir, hostname=_hostname(config), domainname=config.domainname, name=config.name, ips=[r.ip for r in results],
            extra_hosts=[etc_files.parse_add_host(h, gateway=gateway) for h in config.add_hosts],
            dns=config.dns, dns_search=config.dns_search, dns_options=config.dns_options,
            network_mode="bridge" if results else "none",
            host_resolv_conf=self.resolv_conf, embedded_dns=dns.ADDRESS if embedded else "",
        )
        for res in results:
            await self._refresh_names(await self.store.get(res.network_id))
        await self._open_dns(config, ns, etc_dir, embedded)
        details["_mounts"] = [_mount(src, dst) for src, dst in files.mounts()]
        return details

    async def _check_ports_free(self, config: ContainerConfig) -> None:
        """docker's port allocator: a host port (on an address, or on all of them) that a
        running container publishes is not published again; the second start fails in
        dockerd's words instead of both running and one never reached."""
        taken: dict[tuple[str, int], tuple[str, str]] = {}  # (protocol, port) -> (host ip, name)
        for record in await cni.attachments(self.store):
            if record.container_id == config.id:
                continue
            for entry in record.port_mappings:
                mapping = ports.from_cni(entry)
                taken.setdefault((mapping.protocol, mapping.host_port), (mapping.host_ip, record.name))
        for mapping in config.ports:
            holder = taken.get((mapping.protocol, mapping.host_port))
            if holder is None:
                continue
            their_ip, their_name = holder
            if mapping.host_ip in ("", "0.0.0.0") or their_ip in ("", "0.0.0.0") or their_ip == mapping.host_ip:
                raise Conflict(
                    f"Bind for {mapping.host_ip or '0.0.0.0'}:{mapping.host_port} failed: port is already "
                    f"allocated (published by container {their_name or '?'}); stop it or publish another port"
                )

    async def _check_static_ip(self, network: Network, address: str, container_id: str) -> None:
        """Before asking host-local for ``address``: refused in dockerd's words, naming the
        container that holds it (host-local's own message names only its range set)."""
        static_ip.check_network(network, address)
        static_ip.check_not_aux(network, address)
        holders = [(a.container_id, a.name, a.ip) for a in await cni.attachments(self.store, network)]
        static_ip.check_free(network, address, container_id, holders)

    async def _refresh_names(self, network: Network) -> None:
        """After a join or a leave: the peers' /etc/hosts and the embedded DNS's names."""
        self.dns.invalidate()
        await etc_files.refresh_network(self.store, network)

    async def _open_dns(self, config: ContainerConfig, ns: Path, etc_dir: Path, embedded: bool, *,
                        live: bool = False) -> None:
        """Start the container's resolver before its process runs (the first lookup works);
        its upstreams are recorded for a daemon restart (``resume_dns``)."""
        if not embedded:
            await trio.to_thread.run_sync(lambda: (etc_dir / dns.STATE_FILE).unlink(missing_ok=True))
            return
        resolv_conf = self.resolv_conf

        links_path = self._links_path(config.id)

        def resolver_config() -> dns.ResolverConfig:
            search = list(config.dns_search) or etc_files.host_nameservers(resolv_conf)[1]
            upstreams = list(config.dns) or dns.nameservers_of(resolv_conf)
            return dns.ResolverConfig(upstreams, search, links=_read_links(links_path))

        resolver = await trio.to_thread.run_sync(resolver_config)
        try:
            resolver = await self.dns.open(config.id, ns, resolver, live=live)
            await trio.to_thread.run_sync(dns.write_state, etc_dir, resolver)
        except (OSError, EngineError) as e:
            raise RuntimeFailure(
                f"cannot start the embedded DNS server of container {config.name} at "
                f"{dns.ADDRESS}:{dns.PORT} in its network namespace: {e}"
            ) from None

    async def _embed_dns_live(self, config: ContainerConfig, ns: Path) -> None:
        """A running container joined its first user-defined network: as docker, it gets
        its resolver now and its resolv.conf names 127.0.0.11 (it keeps both when it
        leaves that network again, as docker's does, until its next start)."""
        etc_dir = self.etc_dir(config.id)
        await self._open_dns(config, ns, etc_dir, True, live=True)
        await etc_files.embed_resolv_conf(etc_dir, embedded_dns=dns.ADDRESS, dns_search=config.dns_search,
                                          dns_options=config.dns_options,
                                          host_resolv_conf=self.resolv_conf)

    async def start_dns(self, nursery: trio.Nursery, resolv_conf: Path = etc_files.HOST_RESOLV_CONF) -> None:
        """At daemon start: run the embedded DNS server in ``nursery``; ``resolv_conf`` is
        the file whose nameservers containers use (and it forwards to)."""
        self.resolv_conf = resolv_conf
        await nursery.start(self.dns.run)

    async def resume_dns(self, keep: set[str]) -> None:
        """At daemon start, after reconcile: the resolvers of the containers that kept
        running (their namespaces outlived the last daemon, its sockets did not)."""
        if not self.dns.running:
            return
        for container_id in sorted(keep):
            etc_dir = self.etc_dir(container_id)
            resolver = await trio.to_thread.run_sync(dns.read_state, etc_dir)
            ns = netns.path_for(self.netns_dir, container_id)
            if resolver is None or not await trio.to_thread.run_sync(netns.is_mounted, ns):
                continue
            try:
                async with self._locked(container_id):
                    opened = await self.dns.open(container_id, ns, resolver, fresh=False)
                    if opened != resolver:
                        await trio.to_thread.run_sync(dns.write_state, etc_dir, opened)
            except (OSError, EngineError) as e:
                log.error("container %s: embedded DNS not restored: %s", container_id[:12], e)

    async def _attach(self, network: Network, container_id: str, ns: Path, **kw: Any) -> cni.AttachResult:
        # No retry: the isolation chains are this daemon's own (named after its bridge), so
        # no other engine rebuilds them under us; a failure there is an IsolationError.
        return await cni.attach(self.store, network, container_id, ns, plugin_dir=self.plugin_dir, **kw)

    async def _setup_private(self, config: ContainerConfig) -> dict[str, Any]:
        """``none``: the runtime makes a fresh namespace as it creates the container and
        brings its loopback up (runc and crun both do for a namespace without a path), so
        no namespace file, mount or CNI plugin is needed: three process spawns fewer."""
        files = await etc_files.write_etc_files(
            self.etc_dir(config.id), hostname=_hostname(config), domainname=config.domainname, name=config.name,
            extra_hosts=[etc_files.parse_add_host(h) for h in config.add_hosts],
            dns=config.dns, dns_search=config.dns_search, dns_options=config.dns_options, network_mode="none",
            host_resolv_conf=self.resolv_conf,
        )
        return {"_netns": None, "_mounts": [_mount(src, dst) for src, dst in files.mounts()]}

    async def _network_for_start(self, name: str, config: ContainerConfig) -> Network:
        try:
            return await self.store.get(name)
        except NotFound:
            raise NotFound(
                f"network {name!r} of container {config.name} no longer exists; create it again "
                f"(`engctl network create {name}`) or disconnect the container from it"
            ) from None

    async def _setup_host(self, config: ContainerConfig) -> dict[str, Any]:
        etc_dir = self.etc_dir(config.id)
        files = await etc_files.write_etc_files(
            etc_dir, hostname=_hostname(config), domainname=config.domainname, name=config.name,
            dns=config.dns, dns_search=config.dns_search, dns_options=config.dns_options, network_mode="host",
            host_resolv_conf=self.resolv_conf,
        )
        extra = [etc_files.parse_add_host(h) for h in config.add_hosts]
        await trio.to_thread.run_sync(_write_host_hosts, files.hosts, extra)
        return {"_netns": "host", "_mounts": [_mount(s, d) for s, d in files.mounts()]}

    async def _setup_shared(self, config: ContainerConfig) -> dict[str, Any]:
        owner_id = config.network_mode.removeprefix(CONTAINER_PREFIX)
        try:
            owner = self._containers().get(owner_id)
        except NotFound:
            raise NotFound(
                f"container {owner_id[:12]}, whose network {config.name} shares, no longer "
                "exists; recreate this container with another --network"
            ) from None
        details = owner.status.network_details or {}
        ns = details.get("_netns")
        if ns is None and "_netns" in details and owner.status.pid:
            ns = f"/proc/{owner.status.pid}/ns/net"  # the owner's namespace has no file (none)
        if owner.status.state.value not in _KEEP_STATES or not ns:
            raise Conflict(
                f"container {owner.name}, whose network {config.name} shares, is not running; "
                f"start it first (`engctl start {owner.name}`)"
            )
        mounts = list(owner.status.network_details.get("_mounts", []))
        return {"_netns": ns, "_mounts": mounts, "_shared_with": owner.id}

    # --- stop ------------------------------------------------------------------------------

    async def teardown(self, config: ContainerConfig, status: ContainerStatus) -> None:
        """Undo ``setup`` (idempotent; called at every exit, stop and removal)."""
        async with self._locked(config.id):
            if mode_kind(config.network_mode) == "bridge":  # the other modes attach nothing
                await self._teardown(config)
            status.network_details = {}
            status.ip_address = ""

    async def _teardown(self, config: ContainerConfig) -> None:
        # Every step runs even when an earlier one failed: a DEL that failed keeps its record
        # (reconcile retries it, and DEL copes with a missing namespace), but the namespace
        # and the peers' hosts files must not wait for that.
        errors: list[str] = []
        networks = await self._detach(config.id, errors)
        for network in networks:
            try:
                await self._refresh_names(network)
            except EngineError as e:
                errors.append(str(e))
        await self.dns.close(config.id)
        await netns.delete(self.netns_dir, config.id)
        if errors:
            raise RuntimeFailure(
                f"network teardown of container {config.name} was incomplete: {'; '.join(errors)}; "
                "restarting the daemon reconciles what is left"
            )

    async def _detach(self, container_id: str, errors: list[str]) -> list[Network]:
        """CNI DEL of every attachment of the container; returns the networks it left."""
        left: list[Network] = []
        for record in await cni.attachments(self.store):
            if record.container_id != container_id:
                continue
            try:
                await cni.detach_record(self.store, record, plugin_dir=self.plugin_dir)
            except EngineError as e:
                errors.append(str(e))
            try:
                left.append(await self.store.get(record.network_id))
            except NotFound:
                pass
            else:
                self._tell("disconnect", left[-1], container_id)
        return left

    async def _detach_quiet(self, container_id: str) -> None:
        errors: list[str] = []
        await self._detach(container_id, errors)
        if errors:
            log.warning("container %s: leftover attachments: %s", container_id[:12], "; ".join(errors))

    async def _teardown_quiet(self, config: ContainerConfig) -> None:
        try:
            await self._teardown(config)
        except EngineError as e:
            log.warning("container %s: network teardown after a failed setup: %s", config.short_id, e)

    # --- start-up --------------------------------------------------------------------------

    async def use_settings(self, settings: NetworkSettings) -> None:
        """At daemon start, before anything attaches: this daemon's bridge, bip and pools
        (DaemonConfig.network_settings). The bridge is claimed host-wide until the process
        exits, so a second daemon given the same one is refused (ConfigError)."""
        self.bridge_claim = await trio.to_thread.run_sync(claim_bridge, settings.bridge)
        self.store.settings = settings

    async def close(self) -> None:
        """At daemon stop: undo the namespace directory's self-bind when no namespace is
        left in it (running containers keep theirs, and the mount, for the next daemon)."""
        try:
            if not await netns.list_names(self.netns_dir):
                await netns.release_dir(self.netns_dir)
        except EngineError as e:
            log.warning("namespace directory %s stays mounted: %s", self.netns_dir, e)

    async def needs_reconcile(self) -> bool:
        """Whether anything is recorded at all: attachments, namespaces or IPAM leases.

        A daemon with nothing recorded skips reconcile (which rebuilds the daemon's isolation
        chains and removes its idle bridges): there is nothing of its own to undo."""
        if await cni.attachments(self.store) or await netns.list_names(self.netns_dir):
            return True
        ipam = self.store.ipam_dir
        return await trio.to_thread.run_sync(
            lambda: any(p.name[:1].isdigit() for p in ipam.rglob("*")) if ipam.exists() else False)

    async def reconcile(self, keep: set[str]) -> ReconcileReport:
        """Remove the networking of every container not in ``keep`` (after a crash)."""
        report = await reconcile(self.store, self.netns_dir, keep, plugin_dir=self.plugin_dir)
        for problem in report.errors:
            log.warning("network reconcile: %s", problem)
        if report.detached or report.netns_removed or report.leases_released:
            log.info("network reconcile: detached %s, namespaces %s, leases %s",
                     report.detached, report.netns_removed, report.leases_released)
        return report

    # --- connect / disconnect ----------------------------------------------------------------

    async def connect(self, config: ContainerConfig, status: ContainerStatus, network: str,
                      aliases: list[str], *, running: bool, ipv4_address: str = "") -> dict[str, Any] | None:
        """``network connect`` (called by the container's actor): join now if ``running``,
        and at every later start, with ``ipv4_address`` when one is given (``--ip``).
        Returns the container's new network details when it joined now; the actor records
        them."""
        address = static_ip.parse(ipv4_address)
        net = await self.store.get(network)
        self._require_connectable(config, net)
        if address:  # as dockerd, whether the container runs or not
            static_ip.check_network(net, address)
        async with self._locked(config.id):
            members = await self.memberships(config)
            if any(m.network == net.name for m in members):
                raise AlreadyExists(f"container {config.name} is already connected to network {net.name!r}")
            member = Membership(net.name, sorted(set(aliases) - {""}), address)
            details = None
            if running:
                details = await self._attach_live(config, status, net, member, len(members))
            await trio.to_thread.run_sync(self._write_memberships, config.id, [*members, member])
            return details

    def _require_connectable(self, config: ContainerConfig, net: Network) -> None:
        if net.is_pseudo:
            raise InvalidArgument(
                f"cannot connect to network {net.name!r}: 'host' and 'none' are network modes, "
                "chosen with --network when the container is created"
            )
        if mode_kind(config.network_mode) != "bridge":
            raise Conflict(
                f"container {config.name} uses network mode {config.network_mode!r}: it has no "
                "network namespace of its own to connect; recreate it on a bridge network"
            )

    async def _attach_live(self, config: ContainerConfig, status: ContainerStatus, net: Network,
                           member: Membership, index: int) -> dict[str, Any]:
        ns = netns.path_for(self.netns_dir, config.id)
        used = {a.ifname for a in await cni.attachments(self.store) if a.container_id == config.id}
        ifname = next(f"eth{i}" for i in range(index, index + len(used) + 2) if f"eth{i}" not in used)
        if member.ipv4_address:
            await self._check_static_ip(net, member.ipv4_address, config.id)
        res = await self._attach(net, config.id, ns, ifname=ifname, name=config.name,
                                 aliases=member.aliases, etc_dir=self.etc_dir(config.id),
                                 ip=member.ipv4_address)
        await self._refresh_names(net)
        if net.name != DEFAULT_NETWORK and self.dns.running and not self.dns.serves(config.id):
            await self._embed_dns_live(config, ns)
        self._tell("connect", net, config.id)
        details = dict(status.network_details or {})
        details[net.name] = _endpoint(res, member.ipv4_address)
        return details

    async def disconnect(self, config: ContainerConfig, status: ContainerStatus, network: str,
                         *, force: bool, running: bool) -> dict[str, Any] | None:
        """``network disconnect`` (called by the container's actor): leave now if
        ``running``, and at every later start. Returns the new details when it left now."""
        try:
            net: Network | None = await self.store.get(network)
        except NotFound:
            if not force:
                raise
            net = None
        async with self._locked(config.id):
            members = await self.memberships(config)
            name = net.name if net is not None else network
            if not any(m.network == name for m in members):
                raise NotFound(f"container {config.name} is not connected to network {name!r}")
            details = None
            if net is not None and running:
                for record in await cni.attachments(self.store, net):
                    if record.container_id == config.id:
                        await cni.detach_record(self.store, record, plugin_dir=self.plugin_dir)
                        self._tell("disconnect", net, config.id)  # the endpoint left
                await self._refresh_names(net)
                details = {k: v for k, v in (status.network_details or {}).items() if k != net.name}
            remaining = [m for m in members if m.network != name]
            await trio.to_thread.run_sync(self._write_memberships, config.id, remaining)
            if net is not None:
                self._tell("disconnect", net, config.id)  # dockerd's second one for a running container
            return details

    def _tell(self, action: str, network: Network, container_id: str) -> None:
        """docker's ``network connect``/``disconnect`` event, with dockerd's attributes."""
        if self.events is not None:
            self.events.emit("network", action, network.id, container=container_id, name=network.name,
                             driver=network.driver)

    # --- links ---------------------------------------------------------------------------------

    def _links_path(self, container_id: str) -> Path:
        return self.layout.container_dir(container_id) / LINKS_FILE

    async def set_links(self, container_id: str, links: list[tuple[str, str]]) -> None:
        """docker's legacy ``--link TARGET:ALIAS`` of a container on a user-defined network
        (recorded at create, before its first start): its embedded DNS answers ALIAS with
        TARGET's address on the networks they share, for this container alone, as
        docker's does. TARGET is a name looked up at each query, so it may come later."""
        table = {alias.lower(): target for target, alias in links}
        await trio.to_thread.run_sync(lambda: write_json_atomic(self._links_path(container_id), table))

    async def links(self, container_id: str) -> list[tuple[str, str]]:
        """The (target, alias) pairs ``set_links`` recorded (the alias lowercased), in order."""
        table = await trio.to_thread.run_sync(_read_links, self._links_path(container_id))
        return [(target, alias) for alias, target in table.items()]

    # --- rename ------------------------------------------------------------------------------

    async def renamed(self, container_id: str, new_name: str) -> None:
        """After a rename: peers find the container by its new name at once, in their
        /etc/hosts and the embedded DNS (as in docker), and no longer by the old one."""
        async with self._locked(container_id):
            changed = await cni.rename(self.store, container_id, new_name)
            try:
                mode = self._containers().get(container_id).config.network_mode
            except NotFound:
                mode = ""
            await trio.to_thread.run_sync(lambda: etc_files.rename_own(
                self.etc_dir(container_id), new_name, rewrite=mode == "none"))
            self.dns.invalidate()
            for network_id in changed:
                try:
                    network = await self.store.get(network_id)
                except NotFound:
                    continue
                await etc_files.refresh_network(self.store, network)

    # --- for the network API -----------------------------------------------------------------

    async def attached(self, network: Network) -> list[cni.Attachment]:
        return [a for a in await cni.attachments(self.store, network) if a.result is not None]


def _read_links(path: Path) -> dict[str, str]:
    try:
        data = read_json(path)
    except FileNotFoundError:
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def _hostname(config: ContainerConfig) -> str:
    return config.hostname or config.short_id


def _endpoint(res: cni.AttachResult, ipv4_address: str = "") -> dict[str, Any]:
    return {
        # what the container asked for, as docker's inspect shows it (null: host-local chose)
        "IPAMConfig": {"IPv4Address": ipv4_address} if ipv4_address else None,
        "NetworkID": res.network_id,
        "IPAddress": res.ip,
        "IPPrefixLen": res.prefix_len,
        "Gateway": res.gateway,
        "MacAddress": res.mac,
        "Aliases": list(res.aliases),
        "InterfaceName": res.ifname,
    }


@asynccontextmanager
async def _no_lock() -> Any:
    yield
