"""`docker run --network NET busybox nslookup OTHER` through the Docker API: the embedded
DNS answers at 127.0.0.11 as docker's does. The daemon's --resolv-conf names a loopback
nameserver nobody serves, so nothing is ever forwarded off the machine."""

from __future__ import annotations

import re
from pathlib import Path

from .conftest import EngineFactory


def test_docker_run_resolves_a_peer_by_name(make_engine: EngineFactory, busybox_archive: Path,
                                            tmp_path: Path) -> None:
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.1\n")
    engine = make_engine("--resolv-conf", str(resolv), load_busybox=busybox_archive)
    engine.docker("network", "create", "dnsnet")
    engine.docker("run", "-d", "--name", "other", "--network", "dnsnet", "--network-alias", "db",
                  "busybox", "sleep", "300")
    ip = engine.daemon.call("container.inspect", id="other")["NetworkSettings"]["Networks"]["dnsnet"]["IPAddress"]
    out = engine.docker("run", "--rm", "--network", "dnsnet", "busybox", "sh", "-c",
                        "cat /etc/resolv.conf; nslookup other; nslookup db").stdout
    assert "nameserver 127.0.0.11" in out and "options ndots:0" in out, out
    assert re.findall(r"^Address:\s*([0-9.]+)\s*$", out.split("\n\n", 1)[1], re.M).count(ip) == 2, out
    unknown = engine.docker("run", "--rm", "--network", "dnsnet", "busybox", "nslookup", "nosuch", check=False)
    assert unknown.returncode != 0 and "SERVFAIL" in unknown.stdout, unknown.stdout
    default = engine.docker("run", "--rm", "--network", "bridge", "busybox", "cat", "/etc/resolv.conf").stdout
    assert "127.0.0.11" not in default
    engine.docker("rm", "-f", "other")
    engine.docker("network", "rm", "dnsnet")


def test_link_aliases_on_a_user_network_resolve_for_the_linking_container(
        make_engine: EngineFactory, busybox_archive: Path, tmp_path: Path) -> None:
    """As dockerd: `--link TARGET:ALIAS` on a user network is answered by the embedded DNS
    of the linking container alone (not /etc/hosts), with TARGET's current address."""
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.1\n")
    engine = make_engine("--resolv-conf", str(resolv), load_busybox=busybox_archive)
    engine.docker("network", "create", "linknet")
    engine.docker("run", "-d", "--name", "target", "--network", "linknet", "busybox", "sleep", "300")
    engine.docker("run", "-d", "--name", "linker", "--network", "linknet", "--link", "target:db",
                  "--link", "later:soon", "busybox", "sleep", "300")
    engine.docker("run", "-d", "--name", "bystander", "--network", "linknet", "busybox", "sleep", "300")

    def ip_of(name: str) -> str:
        nets = engine.daemon.call("container.inspect", id=name)["NetworkSettings"]["Networks"]
        return str(nets["linknet"]["IPAddress"])

    def lookup(ctr: str, name: str) -> tuple[int, list[str]]:
        res = engine.docker("exec", ctr, "nslookup", name, check=False)
        return res.returncode, re.findall(r"^Address:\s*([0-9.]+)\s*$", res.stdout.split("\n\n", 1)[-1], re.M)

    assert lookup("linker", "db") == (0, [ip_of("target")])
    assert lookup("linker", "db.linknet") == (0, [ip_of("target")])
    assert lookup("bystander", "db")[1] == []  # the alias is the linker's own
    assert "db" not in engine.docker("exec", "linker", "cat", "/etc/hosts").stdout.split()
    # the target need not exist at create: the alias follows the name
    assert lookup("linker", "soon")[1] == []
    engine.docker("run", "-d", "--name", "later", "--network", "linknet", "busybox", "sleep", "300")
    assert lookup("linker", "soon") == (0, [ip_of("later")])
    # and its address as it is now, after a restart of the target
    engine.docker("restart", "-t", "0", "target")
    assert lookup("linker", "db") == (0, [ip_of("target")])
    engine.docker("rm", "-f", "target", "linker", "bystander", "later")
    engine.docker("network", "rm", "linknet")
