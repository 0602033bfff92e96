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
