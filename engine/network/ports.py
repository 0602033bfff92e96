"""Published ports: docker's ``-p``/``-P`` forms turned into the container's ``PortMapping``s
(the one type, kept in its config) and those into CNI portMappings.

Accepted ``-p`` forms (protocol suffix ``/tcp`` (default), ``/udp`` or ``/sctp`` on any)::

    CTR                 a free host port chosen by us, on every host address
    HOST:CTR            host port HOST on every host address
    IP:HOST:CTR         host port HOST on address IP only
    IP::CTR             a free host port on address IP
    A-B:C-D             ranges of equal length (also with IP:); CTR ranges alone too
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from engine.actors.model import PortMapping
from engine.errors import InvalidArgument, ResourceExhausted

PROTOCOLS = ("tcp", "udp", "sctp")


def to_cni(mapping: PortMapping) -> dict[str, Any]:
    """The portMappings entry the CNI portmap plugin reads from runtimeConfig."""
    return {"hostPort": mapping.host_port, "containerPort": mapping.container_port,
            "protocol": mapping.protocol, "hostIP": mapping.host_ip}


def from_cni(entry: Mapping[str, Any]) -> PortMapping:
    return PortMapping(int(entry["hostPort"]), int(entry["containerPort"]),
                       str(entry.get("protocol", "tcp")), str(entry.get("hostIP", "")))


def _bad(spec: str, why: str) -> InvalidArgument:
    return InvalidArgument(
        f"invalid port specification {spec!r}: {why}; use [IP:][HOST:]CONTAINER[/tcp|/udp], "
        "e.g. 8080:80 or 127.0.0.1:53:53/udp"
    )


def _bad_expose(spec: str, why: str) -> InvalidArgument:
    return InvalidArgument(
        f"invalid --expose value {spec!r}: {why}; use PORT[-PORT][/tcp|/udp|/sctp], e.g. 8080 or 5000-5010/udp")


def _port(spec: str, text: str, bad: Callable[[str, str], InvalidArgument] = _bad) -> int:
    if not text.isdigit():
        raise bad(spec, f"{text!r} is not a port number")
    value = int(text)
    if not 1 <= value <= 65535:
        raise bad(spec, f"port {value} is outside 1-65535")
    return value


def _port_range(spec: str, text: str, bad: Callable[[str, str], InvalidArgument] = _bad) -> list[int]:
    first, sep, last = text.partition("-")
    if not sep:
        return [_port(spec, text, bad)]
    lo, hi = _port(spec, first, bad), _port(spec, last, bad)
    if hi < lo:
        raise bad(spec, f"range {text} ends before it starts")
    return list(range(lo, hi + 1))


def _split_ip(spec: str, body: str) -> tuple[str, str]:
    """Split off a leading host address ("[::1]:..." for IPv6) from ``body``."""
    if body.startswith("["):
        ip, sep, rest = body[1:].partition("]:")
        if not sep:
            raise _bad(spec, "an IPv6 address in brackets must be followed by ':'")
    else:
        parts = body.split(":")
        if len(parts) < 3:
            return "", body
        ip, rest = ":".join(parts[:-2]), ":".join(parts[-2:])
    try:
        ipaddress.ip_address(ip)
    except ValueError:
        raise _bad(spec, f"{ip!r} is not an IP address") from None
    return ip, rest


Held = set[tuple[str, int]]  # (protocol, host port) that other containers publish
_PICKS = 64


def free_port(protocol: str = "tcp", host_ip: str = "", avoid: Held | None = None) -> int:
    """A host port that is free right now, found by binding port 0 (blocking but instant),
    and not in ``avoid``: published ports are iptables rules, not sockets, so the kernel
    alone would hand out a port another container publishes. A port chosen is added to
    ``avoid``."""
    kind = socket.SOCK_DGRAM if protocol == "udp" else socket.SOCK_STREAM
    family = socket.AF_INET6 if ":" in host_ip else socket.AF_INET
    for _ in range(_PICKS):
        with socket.socket(family, kind) as s:
            try:
                s.bind((host_ip or ("::" if family == socket.AF_INET6 else "0.0.0.0"), 0))
            except OSError as e:
                raise ResourceExhausted(f"cannot find a free {protocol} port on {host_ip or '*'}: {e}") from None
            port = int(s.getsockname()[1])
        if avoid is None:
            return port
        if (protocol, port) not in avoid:
            avoid.add((protocol, port))
            return port
    raise ResourceExhausted(f"cannot find a free {protocol} port on {host_ip or '*'}: the {_PICKS} the kernel "
                            "offered are published by other containers; remove some")


def parse_publish(spec: str, avoid: Held | None = None) -> list[PortMapping]:
    """Parse one ``-p`` value into mappings (host port 0 never escapes: it is chosen here,
    outside ``avoid``)."""
    body, _, protocol = spec.strip().partition("/")
    protocol = protocol.lower() or "tcp"
    if protocol not in PROTOCOLS:
        raise _bad(spec, f"unknown protocol {protocol!r}")
    if not body:
        raise _bad(spec, "no container port")
    host_ip, rest = _split_ip(spec, body)
    host_part, sep, ctr_part = rest.rpartition(":")
    if not sep:
        host_part, ctr_part = "", rest
    ctr_ports = _port_range(spec, ctr_part)
    if not host_part:
        return [PortMapping(free_port(protocol, host_ip, avoid), c, protocol, host_ip) for c in ctr_ports]
    host_ports = _port_range(spec, host_part)
    if len(host_ports) == 1 and len(ctr_ports) == 1:
        return [PortMapping(host_ports[0], ctr_ports[0], protocol, host_ip)]
    if len(host_ports) != len(ctr_ports):
        raise _bad(spec, "host and container port ranges differ in length")
    return [PortMapping(h, c, protocol, host_ip) for h, c in zip(host_ports, ctr_ports, strict=True)]


def parse_expose(spec: str) -> list[str]:
    """One ``--expose`` value (``PORT``, ``PORT-PORT``, with ``/udp`` or ``/sctp``) as the
    image config's ``ExposedPorts`` keys (``"81/tcp"``), a range expanded as docker's CLI does."""
    body, _, protocol = spec.strip().partition("/")
    protocol = protocol.lower() or "tcp"
    if protocol not in PROTOCOLS:
        raise _bad_expose(spec, f"unknown protocol {protocol!r}")
    ports = _port_range(spec, body, _bad_expose)
    return [f"{port}/{protocol}" for port in ports]


def publish_all(exposed_ports: Iterable[str], host_ip: str = "", avoid: Held | None = None) -> list[PortMapping]:
    """``-P``: every port the image exposes (``"80/tcp"``) on a free host port."""
    found = []
    for entry in sorted(exposed_ports):
        port, _, protocol = entry.partition("/")
        spec = f"{host_ip}::{port}/{protocol or 'tcp'}" if host_ip else f"{port}/{protocol or 'tcp'}"
        found.extend(parse_publish(spec, avoid))
    return found


def parse_all(specs: Iterable[str], exposed_ports: Iterable[str] = (), publish_all_ports: bool = False,
              avoid: Held | None = None) -> list[PortMapping]:
    """Every ``-p`` (and ``-P``) of one container; the same host port twice is refused.
    Host ports chosen here are outside ``avoid`` (and are added to it)."""
    mappings: list[PortMapping] = []
    for spec in specs:
        mappings.extend(parse_publish(spec, avoid))
    if publish_all_ports:
        published = {(m.container_port, m.protocol) for m in mappings}
        for m in publish_all(exposed_ports, avoid=avoid):
            if (m.container_port, m.protocol) not in published:
                mappings.append(m)
    seen: dict[tuple[str, int, str], PortMapping] = {}
    for m in mappings:
        key = (m.host_ip, m.host_port, m.protocol)
        if key in seen:
            raise InvalidArgument(
                f"host port {m.host_port}/{m.protocol} is published twice (for container ports "
                f"{seen[key].container_port} and {m.container_port}); pick different host ports"
            )
        seen[key] = m
    return mappings
