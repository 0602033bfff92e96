"""docker -p / -P forms into CNI portMappings (no root needed)."""

from __future__ import annotations

import socket

import pytest

from engine.actors.model import PortMapping
from engine.errors import InvalidArgument
from engine.network.ports import (
    from_cni,
    parse_all,
    parse_expose,
    parse_publish,
    publish_all,
    to_cni,
)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("8080:80", [PortMapping(8080, 80)]),
        ("127.0.0.1:8080:80", [PortMapping(8080, 80, "tcp", "127.0.0.1")]),
        ("53:53/udp", [PortMapping(53, 53, "udp")]),
        ("127.0.0.1:5353:53/UDP", [PortMapping(5353, 53, "udp", "127.0.0.1")]),
        ("[::1]:8080:80", [PortMapping(8080, 80, "tcp", "::1")]),
        ("8000-8001:80-81", [PortMapping(8000, 80), PortMapping(8001, 81)]),
    ],
)
def test_explicit_forms(spec: str, expected: list[PortMapping]) -> None:
    assert parse_publish(spec) == expected


def _is_free(port: int, kind: int) -> bool:
    with socket.socket(socket.AF_INET, kind) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


@pytest.mark.parametrize("spec", ["80", "127.0.0.1::80", "80/udp"])
def test_free_host_port_is_chosen(spec: str) -> None:
    (m,) = parse_publish(spec)
    assert m.container_port == 80 and 1024 < m.host_port <= 65535
    assert _is_free(m.host_port, socket.SOCK_DGRAM if m.protocol == "udp" else socket.SOCK_STREAM)
    assert m.host_ip == ("127.0.0.1" if spec.startswith("127") else "")


def test_cni_shape() -> None:
    assert to_cni(PortMapping(8080, 80, "udp", "127.0.0.1")) == {
        "hostPort": 8080, "containerPort": 80, "protocol": "udp", "hostIP": "127.0.0.1"}
    assert from_cni(to_cni(PortMapping(1, 2))) == PortMapping(1, 2)


def test_parsed_ports_are_the_container_configs_type() -> None:
    # one type per concept: what -p parses is what the container's config stores
    assert parse_publish("8080:80") == [PortMapping(8080, 80)]
    assert all(type(m) is PortMapping for m in parse_all(["53:53/udp", "9000"]))


def test_publish_all_from_exposed_ports() -> None:
    found = publish_all(["80/tcp", "53/udp"])
    assert sorted((m.container_port, m.protocol) for m in found) == [(53, "udp"), (80, "tcp")]
    assert all(m.host_port > 0 for m in found)
    # -p wins over -P for the same container port.
    mixed = parse_all(["8080:80"], exposed_ports=["80/tcp", "443/tcp"], publish_all_ports=True)
    assert PortMapping(8080, 80) in mixed and len(mixed) == 2


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("", "no container port"),
        ("abc", "not a port number"),
        ("70000:80", "outside 1-65535"),
        ("0:80", "outside 1-65535"),
        ("80/icmp", "unknown protocol"),
        ("1.2.3:80:80", "not an IP address"),
        ("8000-8002:80-81", "differ in length"),
        ("90-80:90-80", "ends before it starts"),
    ],
)
def test_bad_specs_say_what_is_wrong(spec: str, words: str) -> None:
    with pytest.raises(InvalidArgument, match=words) as info:
        parse_publish(spec)
    assert "8080:80" in str(info.value)  # and show a form that works


def test_same_host_port_twice_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="published twice"):
        parse_all(["8080:80", "8080:81"])
    assert len(parse_all(["8080:80", "8080:80/udp"])) == 2


def test_expose_values_become_exposed_port_keys() -> None:
    assert parse_expose("81") == ["81/tcp"]
    assert parse_expose("5000-5002/UDP") == ["5000/udp", "5001/udp", "5002/udp"]


@pytest.mark.parametrize(("spec", "words"), [("", "not a port number"), ("x/tcp", "not a port number"),
                                             ("81/icmp", "unknown protocol"), ("0", "outside 1-65535"),
                                             ("90-80", "ends before it starts")])
def test_bad_expose_values_say_what_is_wrong(spec: str, words: str) -> None:
    with pytest.raises(InvalidArgument, match=f"--expose value .*{words}.*PORT\\[-PORT\\]"):
        parse_expose(spec)
