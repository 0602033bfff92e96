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
from engine.network._proc import run
from engine.network.settings import DEFAULT_BRIDGE as DEFAULT_BRIDGE  # re-exported
from engine.network.settings import NetworkSettings
from engine.store.atomic import read_json, write_json_atomic

log = logging.getLogger("engine.network")

DEFAULT_NETWORK = "bridge"
DEFAULT_SUBNET = NetworkSettings().subnet  # of a daemon with the default settings
PSEUDO_NETWORKS = {"host": "host", "none": "null"}
CNI_VERSION = "1.0.0"

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
        _bridge: str | None = None,
        _allow_default: bool = False,
    ) -> Network:
        _check_name(name)
        if name in PSEUDO_NETWORKS or (name == DEFAULT_NETWORK and not _allow_default):
            raise AlreadyExists(f"network {name!r} is predefined; choose another name")
        async with self._lock:
            existing = await self._load_all()
            if any(n.name == name for n in existing):
                raise AlreadyExists(f"network {name!r} exists already; remove it first or pick another name")
            net = await self._choose_subnet(subnet, existing, for_default=_allow_default)
            net_id = secrets.token_hex(32)
            network = Network(
                name=name, id=net_id, subnet=str(net), gateway=_pick_gateway(net, gateway),
                internal=internal, bridge=_bridge or f"eng-{net_id[:10]}",
                labels=dict(labels or {}), created=time.time(), pooled=not subnet,
            )
            await trio.to_thread.run_sync(self._write, network)
            return network

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
    def conflist(self, network: Network) -> dict[str, Any]:
        """The CNI network configuration list for ``network`` (plugins run in this order)."""
        if network.is_pseudo:
            raise InvalidArgument(f"network {network.name!r} has no CNI configuration")
        ipam: dict[str, Any] = {
            "type": "host-local",
            "ranges": [[{"subnet": network.subnet, "gateway": network.gateway}]],
            # Leases live with the network definitions, so a check (or reconcile) can see them.
            "dataDir": str(self.ipam_dir),
        }
        if not network.internal:
            ipam["routes"] = [{"dst": "0.0.0.0/0"}]
        return {
            "cniVersion": CNI_VERSION,
            "name": network.name,
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": network.bridge,
                    "isGateway": True,
                    "ipMasq": not network.internal,
                    "hairpinMode": True,
                    # host-local reads a container's chosen address (--ip) from the
                    # runtimeConfig the bridge plugin hands over to it: {"ips": ["A/len"]}
                    "capabilities": {"ips": True},
                    "ipam": ipam,
                },
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
