"""Network definitions: create/get/list/remove/prune and the generated CNI conflist."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from engine.errors import AlreadyExists, Conflict, InvalidArgument, NotFound
from engine.network.networks import DEFAULT_BRIDGE, DEFAULT_SUBNET, NetworkStore


@pytest.fixture
def store(tmp_path: Path) -> NetworkStore:
    return NetworkStore(tmp_path / "networks")


async def test_default_and_pseudo_networks(store: NetworkStore) -> None:
    names = {n.name: n for n in await store.list()}
    assert set(names) == {"bridge", "host", "none"}
    assert names["bridge"].bridge == DEFAULT_BRIDGE and names["bridge"].subnet == DEFAULT_SUBNET
    assert names["bridge"].gateway == "10.89.0.1"
    assert names["host"].driver == "host" and names["none"].driver == "null"
    assert (await store.get("none")).is_pseudo
    for name in ("bridge", "host", "none"):
        with pytest.raises(Conflict, match="predefined"):
            await store.remove(name)
        with pytest.raises(AlreadyExists):
            await store.create(name)


async def test_create_allocates_distinct_subnets_and_persists(store: NetworkStore) -> None:
    a = await store.create("a", labels={"team": "x"})
    b = await store.create("b", internal=True)
    nets = [ipaddress.ip_network(n.subnet) for n in (a, b)]
    assert not nets[0].overlaps(nets[1])
    assert not nets[0].overlaps(ipaddress.ip_network(DEFAULT_SUBNET))
    assert len(a.bridge) <= 15 and a.bridge != b.bridge
    again = NetworkStore(store.directory)  # what a restarted daemon sees
    assert await again.get("a") == a
    assert await again.get(b.id[:8]) == b
    assert (await again.get("a")).labels == {"team": "x"}


async def test_explicit_subnet_and_gateway(store: NetworkStore) -> None:
    n = await store.create("fixed", subnet="10.77.3.0/24", gateway="10.77.3.254")
    assert (n.subnet, n.gateway) == ("10.77.3.0/24", "10.77.3.254")
    with pytest.raises(Conflict, match="overlaps"):
        await store.create("clash", subnet="10.77.0.0/16")
    with pytest.raises(InvalidArgument, match="not a usable address"):
        await store.create("gw", subnet="10.78.0.0/24", gateway="10.79.0.1")
    with pytest.raises(InvalidArgument, match="invalid subnet"):
        await store.create("bad", subnet="10.78.0.1/24")
    with pytest.raises(InvalidArgument, match="invalid network name"):
        await store.create("no/slash")
    with pytest.raises(AlreadyExists):
        await store.create("fixed")


async def test_remove_prune_and_not_found(store: NetworkStore) -> None:
    await store.create("one")
    await store.create("two")
    await store.remove("one")
    with pytest.raises(NotFound, match="network ls"):
        await store.get("one")
    assert await store.prune() == ["two"]
    assert {n.name for n in await store.list()} == {"bridge", "host", "none"}


async def test_conflist(store: NetworkStore) -> None:
    pub = store.conflist(await store.create("pub"))
    internal = store.conflist(await store.create("priv", internal=True))
    assert [p["type"] for p in pub["plugins"]] == ["bridge", "portmap", "firewall"]
    bridge = pub["plugins"][0]
    assert bridge["isGateway"] and bridge["ipMasq"] and bridge["hairpinMode"]
    assert bridge["ipam"]["type"] == "host-local"
    assert bridge["ipam"]["dataDir"] == str(store.ipam_dir)
    assert bridge["ipam"]["routes"] == [{"dst": "0.0.0.0/0"}]
    assert pub["plugins"][1]["capabilities"] == {"portMappings": True}
    assert internal["plugins"][0]["ipMasq"] is False
    assert "routes" not in internal["plugins"][0]["ipam"]
    with pytest.raises(InvalidArgument):
        store.conflist(await store.get("host"))
