"""Network definitions: what a network is, where it is stored, and its CNI configuration.

Layout under the directory the engine passes (``layout.networks_dir``)::

    defs/<id>.json                         one network definition each
    ipam/<network name>/<ip>               host-local IPAM leases (CNI dataDir)
    attachments/<network id>/<ctr>.<if>.json  one cached CNI ADD result per attachment

The default network "bridge" is created on first use from the daemon's settings
(engine.network.settings: by default bridge ``engine0``, 10.89.0.0/24), and follows them
when they change while no container is attached to it. User networks get their subnets from
the settings' address pools. "host" and "none" are pseudo-networks: they have no definition
file and no CNI config.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import re
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import trio

from engine.convert import disk
from engine.errors import AlreadyExists, Conflict, InvalidArgument, NotFound, ResourceExhausted
from engine.network import options as netopts
from engine.network._proc import run
from engine.network.settings import DEFAULT_BRIDGE as DEFAULT_BRIDGE  # re-exported
from engine.network.settings import NetworkSettings
from engine.store.atomic import read_json, write_json_atomic

log = logging.getLogger("engine.network")

DEFAULT_NETWORK = "bridge"
DEFAULT_SUBNET = NetworkSettings().subnet  # of a daemon with the default settings
PSEUDO_NETWORKS = {"host": "host", "none": "null"}
CNI_VERSION = "1.0.0"
# The owner written into the host-local lease file that keeps an --aux-address from containers
AUX_OWNER = "engine-aux-address"

_NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$")


@attrs.frozen
class Network:
    name: str
    id: str
    driver: str = "bridge"  # bridge | host | null
    subnet: str = ""
    gateway: str = ""
    internal: bool = False
    bridge: str = ""  # the host interface (<= 15 chars)
    labels: dict[str, str] = attrs.field(factory=dict)
    created: float = 0.0
    # The subnet came from the daemon's address pools (no --subnet): docker gives such a
    # network's containers no address of their choice (--ip). False for networks written
    # before this field existed, which keeps --ip working on them.
    pooled: bool = False
    # docker's driver options as given (``network inspect``'s Options) and what they set
    # (engine.network.options); the defaults are those of networks written before them.
    options: dict[str, str] = attrs.field(factory=dict)
    mtu: int = 0  # 0: the kernel's default
    masquerade: bool = True
    icc: bool = True
    ip_range: str = ""  # --ip-range: the sub-range host-local hands out ("" for the subnet)
    aux_addresses: dict[str, str] = attrs.field(factory=dict)  # --aux-address: never a container's

    @property
    def is_pseudo(self) -> bool:
        return self.driver != "bridge"


def _pseudo(name: str) -> Network:
    # Stable ids, so a pseudo-network's id is the same in every listing.
    return Network(name=name, id=(name.encode().hex() * 16)[:64], driver=PSEUDO_NETWORKS[name])


def _check_name(name: str) -> None:
    if not _NAME_RE.match(name):
        raise InvalidArgument(
            f"invalid network name {name!r}: use 1-63 letters, digits, '_', '.', '-', "
            "starting with a letter or digit"
        )


def _parse_subnet(subnet: str) -> ipaddress.IPv4Network:
    try:
        net = ipaddress.ip_network(subnet, strict=True)
    except ValueError as e:
        raise InvalidArgument(f"invalid subnet {subnet!r}: {e}; write it like 10.90.0.0/24") from None
    if not isinstance(net, ipaddress.IPv4Network):
        raise InvalidArgument(f"subnet {subnet!r} is IPv6; only IPv4 networks are supported")
    if net.prefixlen > 30:
        raise InvalidArgument(f"subnet {subnet!r} is too small: use a /30 or larger")
    return net


def _pick_gateway(net: ipaddress.IPv4Network, gateway: str | None) -> str:
    if not gateway:
        return str(net.network_address + 1)
    try:
        gw = ipaddress.ip_address(gateway)
    except ValueError:
        raise InvalidArgument(f"invalid gateway {gateway!r}: write an IPv4 address") from None
    if gw not in net or gw in (net.network_address, net.broadcast_address):
        raise InvalidArgument(f"gateway {gateway} is not a usable address of subnet {net}")
    return str(gw)


async def host_routes() -> list[ipaddress.IPv4Network]:
    """Destinations the host routes already (a new subnet must not overlap them)."""
    proc = await run(["ip", "-4", "-j", "route", "show", "table", "all"])
    found = []
    for route in json.loads(proc.stdout or b"[]"):
        dst = route.get("dst", "")
        if dst in ("default", "") or route.get("type") in ("broadcast", "local"):
            continue
        try:
            found.append(ipaddress.IPv4Network(dst, strict=False))
        except ValueError:
            continue
    return found


# NetworkStore.list shadows the builtin inside the class body.
_Networks = list[Network]
_Names = list[str]


class NetworkStore:
    """The persisted set of networks. One instance per daemon; methods are trio-async."""

    def __init__(self, directory: Path, settings: NetworkSettings | None = None) -> None:
        self.directory = directory
        self.settings = settings or NetworkSettings()
        self.defs_dir = directory / "defs"
        self.ipam_dir = directory / "ipam"
        self.attachments_dir = directory / "attachments"
        self._lock = trio.Lock()

    # --- reading ---------------------------------------------------------------------------
    def _load_all_sync(self) -> _Networks:
        self.defs_dir.mkdir(parents=True, exist_ok=True)
        found = []
        for entry in sorted(os.scandir(self.defs_dir), key=lambda e: e.name):
            if entry.name.endswith(".json") and not entry.name.startswith("."):
                found.append(disk.structure(read_json(Path(entry.path)), Network))
        return found

    async def _load_all(self) -> _Networks:
        return await trio.to_thread.run_sync(self._load_all_sync)

    async def list(self) -> _Networks:
        """Every network, the default and pseudo-networks included."""
        await self.ensure_default()
        user = await self._load_all()
        return user + [_pseudo(n) for n in PSEUDO_NETWORKS]

    async def get(self, name_or_id: str) -> Network:
        """By exact name, exact id, or unique id prefix (docker's rules)."""
        if name_or_id in PSEUDO_NETWORKS:
            return _pseudo(name_or_id)
        if name_or_id == DEFAULT_NETWORK:
            return await self.ensure_default()
        nets = await self._load_all()
        for net in nets:
            if name_or_id in (net.name, net.id):
                return net
        matches = [n for n in nets if name_or_id and n.id.startswith(name_or_id)]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise InvalidArgument(f"network id prefix {name_or_id!r} is ambiguous; give more characters")
        raise NotFound(f"network {name_or_id!r} not found; see `engctl network ls`")

    # --- creating --------------------------------------------------------------------------
    async def ensure_default(self) -> Network:
        for net in await self._load_all():
            if net.name == DEFAULT_NETWORK:
                return await self._follow_settings(net)
        s = self.settings
        try:
            return await self.create(
                DEFAULT_NETWORK, subnet=s.subnet, gateway=s.gateway, _bridge=s.bridge,
                _allow_default=True,
            )
        except AlreadyExists:  # created concurrently
            return await self.get(DEFAULT_NETWORK)
        except Conflict as e:
            raise Conflict(f"the default network cannot use the daemon's bip {s.bip}: {e}") from None

    async def _follow_settings(self, default: Network) -> Network:
        """The default network as the settings say (--bridge/--bip changed since it was
        written), unless containers are still attached to its old bridge: those keep it
        until the last one leaves, so a running container is never cut off."""
        s = self.settings
        if (default.bridge, default.subnet, default.gateway) == (s.bridge, s.subnet, s.gateway):
            return default
        async with self._lock:
            if await self.attached_containers(default):
                log.warning("default network keeps bridge %s (%s) while containers are attached; "
                            "it moves to %s (%s) when they are gone",
                            default.bridge, default.subnet, s.bridge, s.subnet)
                return default
            others = [n for n in await self._load_all() if n.id != default.id and n.subnet]
            for other in others:
                if ipaddress.IPv4Network(other.subnet).overlaps(s.bip.network):
                    raise Conflict(f"the daemon's bip {s.bip} overlaps subnet {other.subnet} of "
                                   f"network {other.name!r}; remove that network or choose another bip")
            moved = attrs.evolve(default, bridge=s.bridge, subnet=s.subnet, gateway=s.gateway)
            await trio.to_thread.run_sync(self._write, moved)
            await trio.to_thread.run_sync(_rmtree_quiet, self.ipam_dir / DEFAULT_NETWORK)
        # The old bridge went with its last attachment; its name may be another daemon's now.
        return moved

    async def create(
        self,
        name: str,
        subnet: str | None = None,
        gateway: str | None = None,
        internal: bool = False,
        labels: dict[str, str] | None = None,
        *,
        options: dict[str, str] | None = None,
        ip_range: str = "",
        aux_addresses: dict[str, str] | None = None,
        _bridge: str | None = None,
        _allow_default: bool = False,
    ) -> Network:
        """A new bridge network. ``options`` are docker's driver options (``-o``, see
        engine.network.options), ``ip_range`` and ``aux_addresses`` its IPAM extras (both
        need ``subnet``, as docker's CLI says)."""
        _check_name(name)
        if name in PSEUDO_NETWORKS or (name == DEFAULT_NETWORK and not _allow_default):
            raise AlreadyExists(f"network {name!r} is predefined; choose another name")
        opts = netopts.parse(dict(options or {}))
        if (ip_range or aux_addresses) and not subnet:
            what = "ip-range" if ip_range else "aux-address"
            raise InvalidArgument(f"every ip-range or gateway must have a corresponding subnet "
                                  f"(--{what} needs --subnet)")
        async with self._lock:
            existing = await self._load_all()
            if any(n.name == name for n in existing):
                raise AlreadyExists(f"network {name!r} exists already; remove it first or pick another name")
            net = await self._choose_subnet(subnet, existing, for_default=_allow_default)
            sub_range = netopts.parse_ip_range(net, ip_range)
            if gateway is None and sub_range is not None:
                gateway = netopts.range_gateway(net, sub_range)  # dockerd's choice
            chosen_gateway = _pick_gateway(net, gateway)
            aux = netopts.parse_aux(net, chosen_gateway, dict(aux_addresses or {}))
            net_id = secrets.token_hex(32)
            bridge = _bridge or opts.bridge or f"eng-{net_id[:10]}"
            if opts.bridge:
                await self._check_bridge_free(opts.bridge, net_id, existing)
            network = Network(
                name=name, id=net_id, subnet=str(net), gateway=chosen_gateway,
                internal=internal, bridge=bridge,
                labels=dict(labels or {}), created=time.time(), pooled=not subnet,
                options=dict(options or {}), mtu=opts.mtu, masquerade=opts.masquerade, icc=opts.icc,
                ip_range=str(sub_range or ""), aux_addresses=aux,
            )
            await trio.to_thread.run_sync(self._write, network)
            await trio.to_thread.run_sync(self.reserve_aux, network)
            return network

    async def _check_bridge_free(self, bridge: str, net_id: str, existing: _Networks) -> None:
        """A bridge name of one's own (``com.docker.network.bridge.name``): not another
        network's, the daemon's default bridge or any interface the host has now."""
        for other in existing:
            if other.bridge == bridge:
                raise Conflict(f"cannot create network {net_id} ({bridge}): conflicts with network "
                               f"{other.id} ({bridge}): networks have same bridge name")
        if bridge == self.settings.bridge:
            raise Conflict(f"cannot create network {net_id} ({bridge}): conflicts with the daemon's "
                           f"default bridge {bridge}: networks have same bridge name")
        proc = await run(["ip", "-j", "-d", "link", "show", "dev", bridge], check=False)
        if proc.returncode != 0:
            return  # no such interface
        links = json.loads(proc.stdout or b"[]")
        kind = ((links[0].get("linkinfo") or {}).get("info_kind") if links else "") or ""
        if kind != "bridge":
            raise Conflict(f"existing interface {bridge} is not a bridge")
        # dockerd would take it over; an engine network owns its bridge (removes it with the
        # network), so a bridge someone else made is left alone
        raise Conflict(f"bridge {bridge} exists on the host already and is not one of this daemon's "
                       "networks; choose another com.docker.network.bridge.name")

    def reserve_aux(self, network: Network) -> None:
        """Keep the network's --aux-address addresses from host-local: a lease file each,
        owned by AUX_OWNER (host-local never gives an address that has one; reconcile
        leaves them). Idempotent; blocking (run it in a thread)."""
        if not network.aux_addresses:
            return
        directory = self.ipam_dir / network.name
        directory.mkdir(parents=True, exist_ok=True)
        for name, ip in network.aux_addresses.items():
            try:
                fd = os.open(directory / ip, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                continue  # reserved already (or a container holds it: created before the aux)
            with os.fdopen(fd, "w") as f:
                f.write(f"{AUX_OWNER}\r\n{name}")

    async def _choose_subnet(
        self, subnet: str | None, existing: _Networks, *, for_default: bool = False
    ) -> ipaddress.IPv4Network:
        taken = [ipaddress.IPv4Network(n.subnet) for n in existing if n.subnet]
        if not for_default and not any(n.name == DEFAULT_NETWORK for n in existing):
            taken.append(self.settings.bip.network)  # the default network's, made on first use
        if subnet:
            net = _parse_subnet(subnet)
            for other in taken:
                if net.overlaps(other):
                    raise Conflict(f"subnet {net} overlaps subnet {other} of another network; pick another")
            return net
        routed = await host_routes()
        for pool in self.settings.pools:
            for candidate in pool.base.subnets(new_prefix=pool.size):
                if not any(candidate.overlaps(o) for o in taken + routed):
                    return candidate
        pools = ", ".join(f"{p.base} (/{p.size}s)" for p in self.settings.pools)
        raise ResourceExhausted(
            f"no free subnet left in the address pools {pools}; remove unused networks "
            "(`network prune`), give --subnet, or give the daemon more default-address-pools"
        )

    def _write(self, network: Network) -> None:
        self.defs_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.defs_dir / f"{network.id}.json", disk.unstructure(network))

    # --- attachments (written by engine.network.cni) ---------------------------------------
    def attachment_dir(self, network: Network) -> Path:
        return self.attachments_dir / network.id

    def attached_containers_sync(self, network: Network) -> _Names:
        try:
            names = os.listdir(self.attachment_dir(network))
        except FileNotFoundError:
            return []
        return sorted({n.split(".", 1)[0] for n in names if n.endswith(".json") and not n.startswith(".")})

    async def attached_containers(self, network: Network) -> _Names:
        return await trio.to_thread.run_sync(self.attached_containers_sync, network)

    # --- removing --------------------------------------------------------------------------
    async def remove(self, name_or_id: str) -> None:
        network = await self.get(name_or_id)
        if network.is_pseudo or network.name == DEFAULT_NETWORK:
            raise Conflict(f"network {network.name!r} is predefined and cannot be removed")
        async with self._lock:
            attached = await self.attached_containers(network)
            if attached:
                raise Conflict(
                    f"network {network.name!r} has containers attached ({', '.join(c[:12] for c in attached)}); "
                    "disconnect or remove them first"
                )
            await trio.to_thread.run_sync(self._delete_files, network)
        await delete_bridge(network)

    def _delete_files(self, network: Network) -> None:
        (self.defs_dir / f"{network.id}.json").unlink(missing_ok=True)
        _rmtree_quiet(self.ipam_dir / network.name)
        _rmtree_quiet(self.attachment_dir(network))

    async def prune(self, match: Callable[[Network], bool] | None = None) -> _Names:
        """Remove user-defined networks without containers (and that ``match``, the
        prune's filters); returns their names."""
        removed: _Names = []
        for net in await self._load_all():
            if match is not None and not match(net):
                continue
            if net.name == DEFAULT_NETWORK or await self.attached_containers(net):
                continue
            try:
                await self.remove(net.id)
            except (Conflict, NotFound):
                continue  # a container attached meanwhile, or removed concurrently
            removed.append(net.name)
        return removed

    # --- CNI -------------------------------------------------------------------------------
    def conflist(self, network: Network, *, whole_subnet: bool = False) -> dict[str, Any]:
        """The CNI network configuration list for ``network`` (plugins run in this order).
        ``whole_subnet``: for a container's own address (--ip), which dockerd allows
        outside the --ip-range too (host-local would refuse it there)."""
        if network.is_pseudo:
            raise InvalidArgument(f"network {network.name!r} has no CNI configuration")
        address_range: dict[str, Any] = {"subnet": network.subnet, "gateway": network.gateway}
        if network.ip_range and not whole_subnet:
            start, end = netopts.range_bounds(ipaddress.IPv4Network(network.subnet),
                                              ipaddress.IPv4Network(network.ip_range))
            address_range.update(rangeStart=start, rangeEnd=end)
        ipam: dict[str, Any] = {
            "type": "host-local",
            "ranges": [[address_range]],
            # Leases live with the network definitions, so a check (or reconcile) can see them.
            "dataDir": str(self.ipam_dir),
        }
        if not network.internal:
            ipam["routes"] = [{"dst": "0.0.0.0/0"}]
        bridge: dict[str, Any] = {
            "type": "bridge",
            "bridge": network.bridge,
            "isGateway": True,
            "ipMasq": network.masquerade and not network.internal,
            "hairpinMode": True,
            # host-local reads a container's chosen address (--ip) from the runtimeConfig
            # the bridge plugin hands over to it: {"ips": ["A/len"]}; the bridge plugin
            # sets the container's --mac-address from {"mac": "..."}
            "capabilities": {"ips": True, "mac": True},
            "ipam": ipam,
        }
        if network.mtu:
            bridge["mtu"] = network.mtu  # the bridge's and every veth's, both ends
        return {
            "cniVersion": CNI_VERSION,
            "name": network.name,
            "plugins": [
                bridge,
                {"type": "portmap", "capabilities": {"portMappings": True}, "snat": True},
                # Accepts the container's traffic in FORWARD even where its policy is DROP
                # (as docker leaves it); isolation between networks is ours (isolation.py).
                {"type": "firewall", "backend": "iptables"},
            ],
        }


async def delete_bridge(network: Network) -> None:
    """Remove the network's bridge interface (CNI's DEL never does); absent is fine."""
    if network.is_pseudo:
        return
    proc = await run(["ip", "link", "show", "dev", network.bridge], check=False)
    if proc.returncode == 0:
        await run(["ip", "link", "delete", "dev", network.bridge, "type", "bridge"])


def _rmtree_quiet(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
