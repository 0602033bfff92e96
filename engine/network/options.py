"""docker's ``network create`` options and IPAM extras, checked as dockerd checks them and in
its words where it has any.

Driver options (``-o KEY=VALUE``, the API's ``Options``) the engine serves, each turned into
a field of ``networks.Network`` and from there into the bridge plugin's configuration:

    com.docker.network.driver.mtu                 the bridge's and the veths' MTU (``mtu``)
    com.docker.network.bridge.name                the host bridge's name (``bridge``)
    com.docker.network.bridge.enable_ip_masquerade  SNAT to the outside (``ipMasq``)
    com.docker.network.bridge.enable_icc          traffic between the network's containers
                                                  (off: a DROP in the isolation chains)

Any other key is refused by name: dockerd keeps options it does not know and does nothing
with them, which would let a compose file believe it got what it asked for.

IPAM: ``--ip-range`` (host-local's ``rangeStart``/``rangeEnd``) and ``--aux-address`` (an
address no container gets: a host-local lease file the engine writes for it, see
``NetworkStore.reserve_aux``).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from pathlib import Path

import attrs

from engine.errors import InvalidArgument

MTU = "com.docker.network.driver.mtu"
BRIDGE_NAME = "com.docker.network.bridge.name"
MASQUERADE = "com.docker.network.bridge.enable_ip_masquerade"
ICC = "com.docker.network.bridge.enable_icc"
SUPPORTED = (MTU, BRIDGE_NAME, MASQUERADE, ICC)

# The smallest MTU IPv4 allows (RFC 791) and the largest a link can have.
MIN_MTU, MAX_MTU = 68, 65535
BRIDGE_NF = Path("/proc/sys/net/bridge/bridge-nf-call-iptables")
_IFNAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")
# Go's strconv.ParseBool, which dockerd uses for the boolean options.
_TRUE = {"1", "t", "T", "TRUE", "true", "True"}
_FALSE = {"0", "f", "F", "FALSE", "false", "False"}


@attrs.frozen
class BridgeOptions:
    mtu: int = 0  # 0: the kernel's default (1500)
    bridge: str = ""  # "": the engine names it
    masquerade: bool = True
    icc: bool = True


def _parse_int(key: str, value: str) -> int:
    if not re.fullmatch(r"[+-]?[0-9]+", value):
        raise InvalidArgument(f'failed to parse {key} value: {value} (strconv.Atoi: parsing "{value}": '
                              "invalid syntax)")
    return int(value)


def _parse_bool(key: str, value: str) -> bool:
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise InvalidArgument(f'failed to parse {key} value: {value} (strconv.ParseBool: parsing "{value}": '
                          "invalid syntax)")


def check_bridge_name(name: str) -> str:
    if len(name) > 15:
        # dockerd's words (netlink's ERANGE for a name longer than IFNAMSIZ-1)
        raise InvalidArgument(f"failed to check bridge interface existence: numerical result out of range "
                              f"({BRIDGE_NAME} {name!r} is longer than 15 characters)")
    if not _IFNAME_RE.match(name):
        raise InvalidArgument(f"invalid {BRIDGE_NAME} {name!r}: an interface name of 1-15 letters, digits, "
                              "'_', '.' and '-', starting with a letter or digit")
    return name


def parse(options: Mapping[str, str]) -> BridgeOptions:
    """The driver options as the bridge needs them; unknown keys refused by name."""
    unknown = sorted(set(options) - set(SUPPORTED))
    if unknown:
        raise InvalidArgument(f"network option {', '.join(unknown)} is not supported by engine "
                              f"(it serves {', '.join(SUPPORTED)})")
    parsed = BridgeOptions()
    if MTU in options:
        mtu = _parse_int(MTU, options[MTU])
        if mtu != 0 and not MIN_MTU <= mtu <= MAX_MTU:
            raise InvalidArgument(f"invalid {MTU} {mtu}: an MTU lies between {MIN_MTU} and {MAX_MTU} "
                                  "(0 for the default)")
        parsed = attrs.evolve(parsed, mtu=mtu)
    if BRIDGE_NAME in options:
        parsed = attrs.evolve(parsed, bridge=check_bridge_name(options[BRIDGE_NAME]))
    if MASQUERADE in options:
        parsed = attrs.evolve(parsed, masquerade=_parse_bool(MASQUERADE, options[MASQUERADE]))
    if ICC in options:
        parsed = attrs.evolve(parsed, icc=_parse_bool(ICC, options[ICC]))
        if not parsed.icc:
            require_bridge_netfilter()
    return parsed


def require_bridge_netfilter() -> None:
    """enable_icc=false drops traffic between two ports of one bridge in iptables' FORWARD
    chain, which bridged traffic only passes with br_netfilter's bridge-nf-call-iptables
    on. The engine does not change that host-wide setting (dockerd does): it refuses."""
    try:
        on = BRIDGE_NF.read_text().strip() == "1"
    except OSError:
        on = False
    if not on:
        raise InvalidArgument(f"{ICC}=false needs bridged traffic to pass iptables: load br_netfilter and "
                              f"set {BRIDGE_NF} to 1 (sysctl net.bridge.bridge-nf-call-iptables=1)")


# --- IPAM --------------------------------------------------------------------------------------


def parse_ip_range(subnet: ipaddress.IPv4Network, ip_range: str) -> ipaddress.IPv4Network | None:
    if not ip_range:
        return None
    try:
        net = ipaddress.ip_network(ip_range, strict=False)
    except ValueError:
        raise InvalidArgument(f"invalid CIDR address: {ip_range}") from None
    if not isinstance(net, ipaddress.IPv4Network) or not net.subnet_of(subnet):
        # dockerd's words (the CLI's check; the API's is libnetwork's "Invalid Address SubPool")
        raise InvalidArgument(f"no matching subnet for range {ip_range}")
    return net


def range_bounds(subnet: ipaddress.IPv4Network, ip_range: ipaddress.IPv4Network) -> tuple[str, str]:
    """host-local's rangeStart and rangeEnd for ``ip_range`` (never the subnet's network or
    broadcast address)."""
    first = max(ip_range.network_address, subnet.network_address + 1)
    last = min(ip_range.broadcast_address, subnet.broadcast_address - 1)
    return str(first), str(last)


def range_gateway(subnet: ipaddress.IPv4Network, ip_range: ipaddress.IPv4Network) -> str:
    """The gateway dockerd picks when an ip-range is given without --gateway: the range's
    first address the subnet can use."""
    return range_bounds(subnet, ip_range)[0]


def parse_aux(subnet: ipaddress.IPv4Network, gateway: str, aux: Mapping[str, str]) -> dict[str, str]:
    """``--aux-address NAME=IP``: each in the subnet and not the gateway (dockerd's words)."""
    found: dict[str, str] = {}
    for name, text in aux.items():
        try:
            ip = ipaddress.IPv4Address(str(text).strip())
        except ValueError:
            ip = None
        if ip is None or ip not in subnet:
            raise InvalidArgument(f"no matching subnet for aux-address {text}")
        if str(ip) == gateway or ip in (subnet.network_address, subnet.broadcast_address):
            raise InvalidArgument(f"failed to allocate secondary ip address ({name}:{ip}): Address already in use")
        if not name:
            raise InvalidArgument(f"invalid --aux-address ={text}: give it a name (NAME=IP)")
        found[name] = str(ip)
    return found
