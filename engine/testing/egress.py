"""The network tests' rule: no container packet leaves this machine. A DROP on the host's
default-route interface for forwarded packets, and ip_forward (which the CNI bridge plugin
turns on) put back afterwards."""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")


def uplink() -> str:
    """The host's default-route interface: where a leaking container packet would go."""
    out = subprocess.run(["ip", "-j", "route", "show", "default"], capture_output=True, check=True)
    routes = json.loads(out.stdout or b"[]")
    return routes[0]["dev"] if routes else ""


@contextlib.contextmanager
def egress_guard() -> Iterator[None]:
    original_forward = IP_FORWARD.read_text()
    dev = uplink()
    guard = ["FORWARD", "-o", dev, "-j", "DROP"]
    if dev:
        subprocess.run(["iptables", "-w", "5", "-t", "mangle", "-I", *guard], check=True)
    try:
        yield
    finally:
        if dev:
            subprocess.run(["iptables", "-w", "5", "-t", "mangle", "-D", *guard], check=False)
        IP_FORWARD.write_text(original_forward)
