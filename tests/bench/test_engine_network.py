"""The harness's engined runs on a bridge, subnet and pool of its own (a network slot of
engine.testing.daemon, never the default engine0, so a bench run and another engine daemon
on the host do not collide), and takes that networking with it when it stops, even after
the daemon was killed with a container attached."""

from __future__ import annotations

import ipaddress
import json
import os
import shlex
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.engines import EngineD
from engine.testing.daemon import claim_net_slot, require, require_binary, sweep_leftovers
from engine.testing.egress import egress_guard
from engine.testing.images import busybox_image, write_docker_archive

pytestmark = pytest.mark.integration

IMAGE = "bench/busybox:latest"


def _iptables_rules() -> str:
    return subprocess.run(["iptables", "-w", "5", "-S"], capture_output=True, text=True, check=True).stdout


def _all_rules() -> str:
    return subprocess.run(["iptables-save"], capture_output=True, text=True, check=True).stdout


def _force_clean(bridge: str, chains: tuple[str, str], addr: str) -> None:
    """Whatever a broken sweep left: rules naming the container's address or the chains,
    the chains, the bridge. Independent of the code under test."""
    table, own = "", {("filter", c) for c in chains}
    for line in _all_rules().splitlines():
        if line.startswith("*"):
            table = line[1:]
        elif line.startswith("-A ") and ((addr and f"{addr}/32" in line) or any(f"-j {c}" in line for c in chains)):
            rule = shlex.split(line)[1:]
            subprocess.run(["iptables", "-w", "5", "-t", table, "-D", *rule], capture_output=True)
            target = rule[rule.index("-j") + 1] if "-j" in rule else ""
            if target.startswith("CNI-") and target != "CNI-FORWARD" and not target.startswith("CNI-HOSTPORT"):
                own.add((table, target))  # the container's own masquerade chain
    for flag in ("-F", "-X"):
        for table, chain in own:
            subprocess.run(["iptables", "-w", "5", "-t", table, flag, chain], capture_output=True)
    subprocess.run(["ip", "link", "delete", bridge, "type", "bridge"], capture_output=True)


@pytest.fixture(name="egress_guard")
def _egress_guard() -> Iterator[None]:
    with egress_guard():
        yield


@pytest.mark.timeout(120)
def test_engined_has_its_own_bridge_and_removes_it_after_a_kill(tmp_path: Path, egress_guard: None) -> None:
    require(os.geteuid() == 0, "needs root (containers, bridges, iptables)")
    for name in ("runc", "conmon", "iptables", "ip"):
        require_binary(name)
    archive = tmp_path / "busybox.tar"
    write_docker_archive(archive, [busybox_image(IMAGE)])
    bridge, chains, addr = "", ("", ""), ""
    engine = EngineD(name="engine", base=tmp_path / "e", run_base=tmp_path / "r", default_runtime="runc")
    try:
        engine.start()
        assert engine.net is not None
        slot = engine.net.index
        bridge, chains = engine.net.bridge, engine.net.settings().chains
        assert bridge != "engine0" and bridge.startswith("engt")
        engine.run("load", "-i", str(archive))
        engine.run("run", "-d", "--name", "c", IMAGE, "sleep", "600")

        doc = json.loads(engine.output("inspect", "c"))
        addr = (doc[0] if isinstance(doc, list) else doc)["NetworkSettings"]["IPAddress"]
        assert ipaddress.IPv4Address(addr) in ipaddress.IPv4Network(engine.net.subnet), addr
        assert Path("/sys/class/net", bridge).exists()
        rules = _iptables_rules()
        assert all(f"-N {c}" in rules for c in chains), chains

        # a daemon killed with its container attached leaves all of it behind...
        assert engine.proc is not None
        engine.proc.send_signal(signal.SIGKILL)
        engine.proc.wait(10)
        assert Path("/sys/class/net", bridge).exists()
        # ...and stop() sweeps it: bridge, isolation chains, and the slot is free again
        engine.stop()
        assert not Path("/sys/class/net", bridge).exists()
        rules = _iptables_rules()
        assert not any(c in rules for c in chains), chains
        assert f"{addr}/32" not in _all_rules()  # the CNI firewall and masquerade rules
        again = claim_net_slot(slot)
        try:
            assert again.index == slot
        finally:
            again.release()
    finally:
        try:
            engine.stop()
        finally:
            sweep_leftovers(tmp_path)
            if bridge:
                _force_clean(bridge, chains, addr)
