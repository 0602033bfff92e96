"""The daemon's network settings: flags and daemon.json keys are checked (a bad one is a
ConfigError naming it, and engined refuses to start), user networks' subnets come from the
address pools, the default network follows --bridge/--bip, and each daemon's isolation
chains are its own."""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
from pathlib import Path

import pytest

from engine.errors import ConfigError, ResourceExhausted
from engine.network import isolation
from engine.network.networks import Network, NetworkStore
from engine.network.settings import claim_bridge, parse_settings
from engine.supervisor.config import DaemonConfig, config_from_args


def _config(tmp_path: Path, *flags: str, file: dict[str, object] | None = None) -> DaemonConfig:
    path = tmp_path / "daemon.json"
    path.write_text(json.dumps(file or {}))
    config, _, _ = config_from_args(["--config", str(path), *flags])
    return config


def test_flags_and_keys_set_the_network_settings(tmp_path: Path) -> None:
    flags = _config(tmp_path, "--bridge", "engx1", "--bip", "10.201.0.1/24",
                    "--default-address-pool", "base=10.202.0.0/16,size=26",
                    "--default-address-pool", "base=10.203.0.0/16,size=24")
    s = flags.network_settings()
    assert (s.bridge, s.subnet, s.gateway) == ("engx1", "10.201.0.0/24", "10.201.0.1")
    assert [(str(p.base), p.size) for p in s.pools] == [("10.202.0.0/16", 26), ("10.203.0.0/16", 24)]
    assert s.chains == ("ENGINE-ISO-engx1-1", "ENGINE-ISO-engx1-2")
    keys = _config(tmp_path, file={"bridge": "engx2", "bip": "10.204.7.254/23",
                                   "default-address-pools": [{"base": "10.205.0.0/16", "size": 24}]})
    s = keys.network_settings()
    assert (s.bridge, s.subnet, s.gateway) == ("engx2", "10.204.6.0/23", "10.204.7.254")
    # Flags win over the file; the plugins see dockerd's spelling too.
    both = _config(tmp_path, "--bip", "10.206.0.1/24", file={"bip": "10.204.7.254/23"})
    assert both.network_settings().gateway == "10.206.0.1"
    assert keys.to_plugin_dict()["default-address-pools"] == [{"base": "10.205.0.0/16", "size": 24}]
    # The defaults: engine0, 10.89.0.0/24 and user networks from 10.89.0.0/16.
    s = _config(tmp_path).network_settings()
    assert (s.bridge, s.subnet, [str(p.base) for p in s.pools]) == ("engine0", "10.89.0.0/24", ["10.89.0.0/16"])


@pytest.mark.parametrize(("flags", "file", "message"), [
    (["--bip", "banana"], None, "invalid bip 'banana'"),
    (["--bip", "10.1.2.0/24"], None, "network address"),
    (["--bip", "10.1.2.255/24"], None, "broadcast address"),
    (["--bip", "10.1.2.1"], None, "no prefix length"),
    (["--bip", "fd00::1/64"], None, "only IPv4"),
    (["--bip", "10.1.2.1/31"], None, "too small"),
    (["--bridge", "a-bridge-name-too-long"], None, "invalid bridge"),
    (["--bridge", "br 0"], None, "invalid bridge"),
    (["--default-address-pool", "10.0.0.0/8"], None, "base=SUBNET,size=PREFIXLEN"),
    (["--default-address-pool", "base=10.0.0.0/8,size=x"], None, "size must be a number"),
    (["--default-address-pool", "base=10.0.0.0/8,size=4"], None, "between 8 and 30"),
    (["--default-address-pool", "base=10.0.0.1/8,size=24"], None, "host bits set"),
    ([], {"bip": 5}, "bip"),
    ([], {"bip": "10.1.2.3/33"}, "invalid bip"),
    ([], {"default-address-pools": []}, "empty"),
    ([], {"default-address-pools": [{"base": "10.0.0.0/8"}]}, "size"),
    ([], {"default-address-pools": [{"base": "10.0.0.0/8", "size": 24, "x": 1}]}, "x"),
])
def test_bad_settings_are_a_clear_config_error(
    tmp_path: Path, flags: list[str], file: dict[str, object] | None, message: str
) -> None:
    with pytest.raises(ConfigError, match="|".join(["bip", "bridge", "pool"])) as info:
        _config(tmp_path, *flags, file=file)
    assert message in str(info.value), str(info.value)


def test_engined_with_a_bad_bip_does_not_start(tmp_path: Path) -> None:
    (tmp_path / "daemon.json").write_text("{}")
    proc = subprocess.run(
        [sys.executable, "-m", "engine.supervisor.daemon", "--root", str(tmp_path / "root"),
         "--run-root", str(tmp_path / "run"), "--config", str(tmp_path / "daemon.json"),
         "--bip", "10.1.2.0/24"],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 1
    assert "invalid bip '10.1.2.0/24'" in proc.stderr and "10.1.2.1/24" in proc.stderr, proc.stderr
    assert not (tmp_path / "root").exists()  # refused before anything was made


async def test_user_subnets_come_from_the_pools_in_order(tmp_path: Path) -> None:
    settings = parse_settings("engx3", "10.210.0.1/24", [
        {"base": "10.210.0.0/23", "size": 24}, {"base": "10.211.0.0/24", "size": 25}])
    store = NetworkStore(tmp_path / "networks", settings)
    default = await store.get("bridge")
    assert (default.bridge, default.subnet, default.gateway) == ("engx3", "10.210.0.0/24", "10.210.0.1")
    # The first pool's first /24 is the default network's: skipped.
    got = [(await store.create(name)).subnet for name in ("n1", "n2", "n3")]
    assert got == ["10.210.1.0/24", "10.211.0.0/25", "10.211.0.128/25"]
    with pytest.raises(ResourceExhausted, match="10.210.0.0/23"):
        await store.create("n4")
    # An explicit subnet need not come from a pool.
    assert (await store.create("n5", subnet="10.99.0.0/24")).subnet == "10.99.0.0/24"


async def test_the_pool_skips_the_bip_before_the_default_network_exists(tmp_path: Path) -> None:
    store = NetworkStore(tmp_path / "networks", parse_settings("engx4", "10.212.0.1/24", [
        {"base": "10.212.0.0/16", "size": 24}]))
    first = await store.create("early")  # before anything asked for "bridge"
    assert ipaddress.ip_network(first.subnet) != ipaddress.ip_network("10.212.0.0/24")


async def test_the_default_network_follows_the_settings_while_idle(tmp_path: Path) -> None:
    old = NetworkStore(tmp_path / "networks", parse_settings("engx5", "10.213.0.1/24", [
        {"base": "10.213.0.0/16", "size": 24}]))
    before = await old.get("bridge")
    new = NetworkStore(tmp_path / "networks", parse_settings("engx6", "10.214.0.1/24", [
        {"base": "10.214.0.0/16", "size": 24}]))
    after = await new.get("bridge")
    assert after.id == before.id
    assert (after.bridge, after.subnet, after.gateway) == ("engx6", "10.214.0.0/24", "10.214.0.1")
    # While a container is attached the old bridge stays (it is not cut off).
    attached = new.attachment_dir(after)
    attached.mkdir(parents=True)
    (attached / "c1.eth0.json").write_text("{}")
    kept = await old.get("bridge")
    assert kept.bridge == "engx6"


def test_isolation_chains_are_per_daemon_and_rebuilt_in_one_restore() -> None:
    a = parse_settings("engx7", "10.215.0.1/24", [{"base": "10.215.0.0/16", "size": 24}])
    b = parse_settings("engx8", "10.216.0.1/24", [{"base": "10.216.0.0/16", "size": 24}])
    assert set(a.chains).isdisjoint(b.chains)
    nets = [Network(name="n", id="1", bridge="eng-1", internal=True), Network(name="m", id="2", bridge="eng-2")]
    text = isolation.restore_input(a.chains, nets)
    lines = text.splitlines()
    assert lines[:3] == ["*filter", ":ENGINE-ISO-engx7-1 - [0:0]", ":ENGINE-ISO-engx7-2 - [0:0]"]
    assert "-A ENGINE-ISO-engx7-1 -i eng-1 ! -o eng-1 -j DROP" in lines
    assert "-A ENGINE-ISO-engx7-1 -i eng-2 ! -o eng-2 -j ENGINE-ISO-engx7-2" in lines
    assert "-A ENGINE-ISO-engx7-2 -o eng-2 -j DROP" in lines
    assert lines[-1] == "COMMIT" and "engx8" not in text


def test_a_bridge_is_claimed_by_one_daemon_at_a_time(tmp_path: Path) -> None:
    claim = claim_bridge("engx9", lock_dir=tmp_path)
    try:
        with pytest.raises(ConfigError, match="in use by another engine daemon"):
            # flock is per open file: a second open in this process conflicts like a second daemon.
            claim_bridge("engx9", lock_dir=tmp_path)
        claim_bridge("engx10", lock_dir=tmp_path).release()
    finally:
        claim.release()
    claim_bridge("engx9", lock_dir=tmp_path).release()
