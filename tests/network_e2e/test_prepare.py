"""prepare_config at create: network modes and published ports (no containers needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.actors.model import ContainerConfig
from engine.errors import InvalidArgument, NotFound
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
