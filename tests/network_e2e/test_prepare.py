"""prepare_config at create: network modes and published ports (no containers needed)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from engine.actors.model import ContainerConfig, PortMapping
from engine.errors import InvalidArgument, NotFound, ResourceExhausted
from engine.network.service import ContainerNetworking
from engine.store.layout import Layout


def _service(tmp_path: Path) -> ContainerNetworking:
    layout = Layout(tmp_path / "root", tmp_path / "run")
    layout.ensure()
    return ContainerNetworking(layout, lambda: NoContainers())


class NoContainers:
    """The container lookup of a daemon that has none."""

    def get(self, ref: str) -> object:
        raise NotFound(f"no such container: {ref}")

    def all(self) -> list[object]:
        return []


def _config(**kw: object) -> ContainerConfig:
    base: dict[str, object] = dict(id="", name="c", image="busybox", image_id="sha256:x", created=0.0, runtime="runc")
    return ContainerConfig(**{**base, **kw})  # type: ignore[arg-type]


async def test_default_mode_is_bridge_and_ports_get_host_ports(tmp_path: Path) -> None:
    svc = _service(tmp_path)
    config = _config(network_mode="", publish_all=True,
                     image_config={"ExposedPorts": {"443/tcp": {}, "53/udp": {}}})
    await svc.prepare_config(config, ["8080:80", "127.0.0.1::81", "90/udp"])
    assert config.network_mode == "bridge" and config.networks == ["bridge"]
    got = {(p.container_port, p.protocol): p for p in config.ports}
    assert got[(80, "tcp")].host_port == 8080
    assert got[(81, "tcp")].host_ip == "127.0.0.1" and got[(81, "tcp")].host_port > 0
    assert got[(90, "udp")].host_port > 0
    assert {(443, "tcp"), (53, "udp")} <= set(got)  # -P: the image's exposed ports


async def test_user_network_by_id_prefix_is_stored_by_name(tmp_path: Path) -> None:
    svc = _service(tmp_path)
    net = await svc.store.create("appnet", subnet="10.250.7.0/24")
    config = _config(network_mode=net.id[:8], aliases=["db"])
    await svc.prepare_config(config, [])
    assert config.network_mode == "appnet"
    assert [(m.network, m.aliases) for m in await svc.memberships(config)] == [("appnet", ["db"])]


@pytest.mark.parametrize("mode", ["none", "host"])
async def test_publish_is_refused_without_a_network_of_its_own(tmp_path: Path, mode: str) -> None:
    svc = _service(tmp_path)
    with pytest.raises(InvalidArgument, match="publish"):
        await svc.prepare_config(_config(network_mode=mode), ["80"])
    config = _config(network_mode=mode, publish_all=True, image_config={"ExposedPorts": {"80/tcp": {}}})
    await svc.prepare_config(config, [])  # -P is ignored there, as docker does
    assert config.ports == [] and config.networks == []


async def test_bad_modes_say_what_to_do(tmp_path: Path) -> None:
    svc = _service(tmp_path)
    with pytest.raises(NotFound, match="network ls"):
        await svc.prepare_config(_config(network_mode="nosuchnet"), [])
    with pytest.raises(InvalidArgument, match="port"):
        await svc.prepare_config(_config(network_mode="bridge"), ["99999"])


class HoldingContainers(NoContainers):
    """A daemon whose one other container was given host ports (published at its start)."""

    def __init__(self, held: list[PortMapping]) -> None:
        self.held = held

    def all(self) -> list[object]:
        return [SimpleNamespace(config=_config(id="other", ports=self.held))]


def _ephemeral_ports() -> range:
    low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    return range(low, high + 1)


async def test_a_chosen_host_port_is_none_another_container_holds(tmp_path: Path) -> None:
    """`-p CTR` picks a host port no other container publishes (docker's allocator): the
    kernel alone knows nothing of published ports (iptables rules, no sockets). With every
    port it can offer held by another container, the create fails saying so."""
    layout = Layout(tmp_path / "root", tmp_path / "run")
    layout.ensure()
    everything = [PortMapping(port, 80) for port in _ephemeral_ports()]
    svc = ContainerNetworking(layout, lambda: HoldingContainers(everything))
    with pytest.raises(ResourceExhausted, match="published by other containers"):
        await svc.prepare_config(_config(network_mode=""), ["80"])
    # udp ports are held apart from tcp ones
    config = _config(network_mode="")
    await svc.prepare_config(config, ["53/udp"])
    assert config.ports[0].host_port in _ephemeral_ports()


async def test_ports_chosen_for_containers_not_registered_yet_are_held(tmp_path: Path) -> None:
    """Two creates at once: the second never gets the first one's host port, though the
    first container is not registered (nor started) yet."""
    svc = _service(tmp_path)
    first, second = _config(network_mode=""), _config(network_mode="")
    await svc.prepare_config(first, ["80", "81"])
    assert {("tcp", m.host_port) for m in first.ports} <= await svc._held_ports("")
    await svc.prepare_config(second, ["80", "81"])
    assert not {m.host_port for m in first.ports} & {m.host_port for m in second.ports}
