"""Helpers for the end-to-end network tests (sync: they drive a separate engined)."""

from __future__ import annotations

import hashlib
import os
import re
import socket
import subprocess
import time
from typing import Any

import attrs

from engine.testing.daemon import Daemon

_COUNTERS = re.compile(r"\[\d+:\d+\]")
HTTPD = "mkdir -p /www{port} && echo {text} > /www{port}/index.html && exec httpd -f -p {port} -h /www{port}"


def run_d(d: Daemon, **params: Any) -> str:
    """engctl run -d: create and start; returns the container id."""
    with d.client() as c:
        cid: str = c.call("container.create", {"image": "busybox", **params})["Id"]
        c.call("container.start", id=cid)
    return cid


def run_attached(d: Daemon, **params: Any) -> tuple[int, str]:
    """engctl run (attached): exit code and stdout+stderr as text; the container is removed."""
    with d.client() as c:
        cid = c.call("container.create", {"image": "busybox", **params})["Id"]
        try:
            stream = c.stream("container.start", id=cid, attach=True)
            out = b"".join(item["data"] for item in stream)
            return int(stream.result["ExitCode"]), out.decode(errors="replace")
        finally:
            c.call("container.remove", id=cid, force=True)


def http_get(url: str, seconds: float = 2) -> str | None:
    proc = subprocess.run(["curl", "-sS", "--noproxy", "*", "--max-time", str(seconds), url],
                          capture_output=True, timeout=seconds + 5)
    return proc.stdout.decode() if proc.returncode == 0 else None


def wait_http(url: str, seconds: float = 15) -> str:
    deadline = time.monotonic() + seconds
    while True:
        body = http_get(url, 1)
        if body is not None:
            return body
        assert time.monotonic() < deadline, f"{url} did not answer within {seconds}s"
        time.sleep(0.1)


def udp_echo(port: int, payload: bytes, seconds: float = 15) -> bytes:
    """Send ``payload`` to 127.0.0.1:port until an answer comes back (the server may be starting)."""
    deadline = time.monotonic() + seconds
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.3)
        while True:
            s.sendto(payload, ("127.0.0.1", port))
            try:
                return s.recvfrom(65536)[0]
            except (TimeoutError, ConnectionRefusedError):
                assert time.monotonic() < deadline, f"no UDP answer on port {port} within {seconds}s"


def host_output(*argv: str) -> str:
    return subprocess.run(list(argv), capture_output=True, check=True, timeout=30).stdout.decode()


def host_links() -> list[str]:
    lines = host_output("ip", "-o", "link", "show").splitlines()
    return sorted(line.split(":")[1].strip().split("@")[0] for line in lines)


@attrs.define
class Scope:
    """What belongs to one daemon on a host shared with other engines and tests: only
    these are compared, so someone else's podman or CNI run cannot fail the check."""

    bridges: set[str] = attrs.field(factory=set)
    subnets: set[str] = attrs.field(factory=set)  # "10.89.3." prefixes
    names: set[str] = attrs.field(factory=set)  # network names
    container_ids: set[str] = attrs.field(factory=set)

    def learn(self, d: Daemon) -> None:
        for net in d.call("network.list"):
            if net["Driver"] != "bridge":
                continue
            # The default network's bridge and subnet are this daemon's alone too (each test
            # daemon has its own, engine.testing.daemon.NetSlot).
            self.names.add(net["Name"])
            self.bridges.add(net["Options"]["com.docker.network.bridge.name"])
            for cfg in net["IPAM"]["Config"]:
                self.subnets.add(cfg["Subnet"].rsplit(".", 1)[0] + ".")

    def markers(self) -> list[str]:
        # Not the network names: the CNI plugins' comments name the network *and* the
        # container id, and another run of the same test on this host uses the same names.
        found = [*self.bridges, *self.subnets, *self.container_ids]
        for name in self.names:
            for cid in self.container_ids:
                digest = hashlib.sha512((name + cid).encode()).hexdigest()
                found += [f"CNI-{digest[:24]}", f"CNI-DN-{digest[:21]}"]
        return found


def snapshot(d: Daemon, scope: Scope) -> dict[str, Any]:
    """What this daemon's networking looks like on the host and in its stores."""
    netns_dir = d.run_root / "netns"
    ipam = d.root / "networks" / "ipam"
    markers = scope.markers()
    rules = host_output("iptables-save").splitlines()
    mounts = host_output("cat", "/proc/self/mountinfo").splitlines()
    links = host_output("ip", "-o", "link", "show").splitlines()
    return {
        "netns_files": sorted(os.listdir(netns_dir)) if netns_dir.exists() else [],
        "nsfs_mounts": sorted(m.split()[4] for m in mounts if " nsfs " in m and str(d.base) in m),
        "links": sorted(line.split(":")[1].strip().split("@")[0] for line in links
                        if any(f" {b}:" in line or f"master {b} " in line for b in scope.bridges)),
        "iptables": sorted(_COUNTERS.sub("", r) for r in rules
                           if not r.startswith("#") and any(m in r for m in markers)),
        "leases": sorted(str(p.relative_to(ipam)) for p in ipam.rglob("*") if p.name[:1].isdigit())
        if ipam.exists() else [],
        "attachments": sorted(str(p) for p in (d.root / "networks" / "attachments").rglob("*.json")),
    }


def diff(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """Readable difference of two snapshots (empty when they are equal)."""
    out: dict[str, Any] = {}
    for key in before:
        b, a = before[key], after[key]
        if b != a:
            out[key] = {"gone": sorted(set(b) - set(a)), "new": sorted(set(a) - set(b))}
    return out
