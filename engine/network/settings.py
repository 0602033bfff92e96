"""Per-daemon network settings: what keeps two daemons on one host out of each other's way.

A daemon's default bridge name (``--bridge``), the default network's address (``--bip``, the
gateway with its prefix, as dockerd writes it) and the pools user networks' subnets come from
(``--default-address-pool``) are its own. Its isolation chains are named after its bridge, so
two daemons with different bridges never touch each other's chains; ``claim_bridge`` refuses
a second daemon that was given the same bridge as a running one.
"""

from __future__ import annotations

import errno
import fcntl
import ipaddress
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import attrs

from engine.errors import ConfigError

DEFAULT_BRIDGE = "engine0"
DEFAULT_BIP = "10.89.0.1/24"
DEFAULT_POOLS: tuple[tuple[str, int], ...] = (("10.89.0.0/16", 24),)
# iptables chain names hold at most 28 characters: the prefix, a 15-character bridge and "-1".
CHAIN_PREFIX = "ENGINE-ISO-"
BRIDGE_LOCK_DIR = Path("/run/lock/engine-bridges")
# Linux interface names: at most 15 bytes; we also keep to characters iptables chains accept.
_BRIDGE_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,14}$")


@attrs.frozen
class AddressPool:
    """Subnets of ``size`` bits carved out of ``base`` (dockerd's default-address-pools)."""

    base: ipaddress.IPv4Network
    size: int


@attrs.frozen
class NetworkSettings:
    bridge: str = DEFAULT_BRIDGE
    bip: ipaddress.IPv4Interface = ipaddress.IPv4Interface(DEFAULT_BIP)
    pools: tuple[AddressPool, ...] = tuple(
        AddressPool(ipaddress.IPv4Network(b), s) for b, s in DEFAULT_POOLS)

    @property
    def subnet(self) -> str:
        """The default network's subnet, e.g. 10.89.0.0/24."""
        return str(self.bip.network)

    @property
    def gateway(self) -> str:
        return str(self.bip.ip)

    @property
    def chains(self) -> tuple[str, str]:
        """This daemon's two isolation chains (see isolation.py)."""
        return f"{CHAIN_PREFIX}{self.bridge}-1", f"{CHAIN_PREFIX}{self.bridge}-2"


def _parse_bridge(bridge: str) -> str:
    if not _BRIDGE_RE.match(bridge):
        raise ConfigError(
            f"invalid bridge {bridge!r}: an interface name of 1-15 letters, digits, '_', '.' "
            "or '-', starting with a letter or digit (e.g. engine1)"
        )
    return bridge


def _parse_bip(bip: str) -> ipaddress.IPv4Interface:
    hint = "write the bridge's address with its prefix length, e.g. 10.89.0.1/24"
    try:
        iface = ipaddress.ip_interface(bip)
    except ValueError:
        raise ConfigError(f"invalid bip {bip!r}: {hint}") from None
    if "/" not in bip:
        raise ConfigError(f"invalid bip {bip!r}: no prefix length; {hint}")
    if not isinstance(iface, ipaddress.IPv4Interface):
        raise ConfigError(f"invalid bip {bip!r}: only IPv4 is supported; {hint}")
    net = iface.network
    if net.prefixlen > 30:
        raise ConfigError(f"invalid bip {bip!r}: a /{net.prefixlen} is too small; use /30 or larger")
    if iface.ip in (net.network_address, net.broadcast_address):
        raise ConfigError(
            f"invalid bip {bip!r}: {iface.ip} is the subnet's "
            f"{'network' if iface.ip == net.network_address else 'broadcast'} address, not a "
            f"usable gateway; e.g. {net.network_address + 1}/{net.prefixlen}"
        )
    return iface


def _parse_pool(index: int, pool: Mapping[str, Any]) -> AddressPool:
    where = f"default-address-pools[{index}]"
    base, size = pool.get("base"), pool.get("size")
    extra = set(pool) - {"base", "size"}
    if extra:
        raise ConfigError(f"invalid {where}: unknown key(s) {', '.join(sorted(extra))}; use base and size")
    if not isinstance(base, str) or not isinstance(size, int) or isinstance(size, bool):
        raise ConfigError(f"invalid {where}: give base (a subnet) and size (a prefix length), "
                          'e.g. {"base": "10.89.0.0/16", "size": 24}')
    try:
        net = ipaddress.ip_network(base, strict=True)
    except ValueError as e:
        raise ConfigError(f"invalid {where} base {base!r}: {e}; write it like 10.89.0.0/16") from None
    if not isinstance(net, ipaddress.IPv4Network):
        raise ConfigError(f"invalid {where} base {base!r}: only IPv4 is supported")
    if not net.prefixlen <= size <= 30:
        raise ConfigError(
            f"invalid {where} size {size}: subnets of {base} must have a prefix length between "
            f"{net.prefixlen} and 30"
        )
    return AddressPool(net, size)


def parse_pool_flag(text: str) -> dict[str, Any]:
    """``--default-address-pool base=10.89.0.0/16,size=24`` (dockerd's form) as a dict."""
    fields: dict[str, Any] = {}
    for part in text.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep or key not in ("base", "size"):
            raise ConfigError(f"invalid --default-address-pool {text!r}: write base=SUBNET,size=PREFIXLEN, "
                              "e.g. base=10.89.0.0/16,size=24")
        fields[key] = value
    if "size" in fields:
        if not str(fields["size"]).isdigit():
            raise ConfigError(f"invalid --default-address-pool {text!r}: size must be a number")
        fields["size"] = int(fields["size"])
    return fields


def parse_settings(bridge: str, bip: str, pools: Iterable[Mapping[str, Any]]) -> NetworkSettings:
    """Check the daemon's network settings; a bad one is a ConfigError naming the key."""
    parsed = tuple(_parse_pool(i, p) for i, p in enumerate(pools))
    if not parsed:
        raise ConfigError("default-address-pools is empty: give at least one pool, "
                          'e.g. [{"base": "10.89.0.0/16", "size": 24}]')
    return NetworkSettings(bridge=_parse_bridge(bridge), bip=_parse_bip(bip), pools=parsed)


class BridgeClaim:
    """An flock on ``/run/lock/engine-bridges/<bridge>``, held for the daemon's lifetime:
    two daemons given the same bridge would share its chains and addresses, so the second
    is refused. The kernel drops the lock when the daemon dies."""

    def __init__(self, fd: int) -> None:
        self.fd: int | None = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def claim_bridge(bridge: str, lock_dir: Path = BRIDGE_LOCK_DIR) -> BridgeClaim:
    """Blocking (a few file operations): run it in a thread."""
    lock_dir.mkdir(parents=True, exist_ok=True)
    path = lock_dir / bridge
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
        os.close(fd)
        if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise
        raise ConfigError(
            f"bridge {bridge!r} is in use by another engine daemon on this host (pid {holder}); "
            "give each daemon its own --bridge and --bip (daemon.json keys bridge, bip)"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return BridgeClaim(fd)
