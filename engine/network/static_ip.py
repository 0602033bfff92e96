"""A container's own IPv4 address on a user network (docker's ``--ip``, compose's
``ipv4_address``), checked as dockerd checks it and in its words.

The address is the container's per network (``service.Membership.ipv4_address``): it asks
host-local for exactly that address at every start and live connect (the ``ips``
capability, see ``NetworkStore.conflist``). The checks here run before the plugins do, so a
refusal names the address and what holds it instead of host-local's range-set message;
host-local stays the authority when two starts race for one address.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from engine.errors import Conflict, InvalidArgument
from engine.network.networks import DEFAULT_NETWORK, Network

# dockerd's words (daemon/container_operations.go, libnetwork's ipam)
ON_PREDEFINED = "user specified IP address is supported on user defined networks only"
ON_POOLED = ("user specified IP address is supported only when connecting to networks with "
             "user configured subnets")
IN_USE = "Address already in use"


def parse(text: str) -> str:
    """The address as given (``--ip``, IPAMConfig.IPv4Address); "" for none."""
    text = text.strip()
    if not text:
        return ""
    try:
        return str(ipaddress.IPv4Address(text))
    except ValueError:
        raise InvalidArgument(f"invalid IPv4 address: {text}") from None


def check_network(network: Network, address: str) -> None:
    """Whether ``network`` lets a container choose ``address``: a user network whose
    subnet was given, the address usable in it (not its network, broadcast or gateway
    address)."""
    if network.name == DEFAULT_NETWORK or network.is_pseudo:
        raise InvalidArgument(ON_PREDEFINED)
    if network.pooled:
        raise InvalidArgument(
            f"{ON_POOLED} (network {network.name!r} has an automatic subnet, {network.subnet}; "
            "create it with --subnet)")
    subnet = ipaddress.IPv4Network(network.subnet)
    ip = ipaddress.IPv4Address(address)
    if ip not in subnet:
        raise InvalidArgument(f"Invalid address {address}: It does not belong to any of this network's subnets")
    if address == network.gateway:
        raise Conflict(f"{IN_USE}: {address} is the gateway of network {network.name!r}")
    if ip in (subnet.network_address, subnet.broadcast_address):
        kind = "network" if ip == subnet.network_address else "broadcast"
        raise Conflict(f"{IN_USE}: {address} is the {kind} address of network {network.name!r} ({subnet})")


def check_free(network: Network, address: str, container_id: str,
               holders: Iterable[tuple[str, str, str]]) -> None:
    """``holders``: (container id, name, address) of the network's attachments now."""
    for holder_id, name, held in holders:
        if held == address and holder_id != container_id:
            raise Conflict(f"{IN_USE}: {address} on network {network.name!r} is held by container "
                           f"{name or holder_id[:12]}; stop it or choose another address")


def check_not_aux(network: Network, address: str) -> None:
    """An --aux-address of the network is never a container's (dockerd: in use)."""
    for name, held in network.aux_addresses.items():
        if held == address:
            raise Conflict(f"{IN_USE}: {address} is the auxiliary address {name!r} of network {network.name!r}")
