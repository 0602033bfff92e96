"""Published ports of real containers answer on the host (TCP and UDP), for runc and crun."""

from __future__ import annotations

import ipaddress
import os
import re
import subprocess
import sys

import pytest

from engine.errors import Conflict
from engine.network.ports import free_port
from engine.testing.daemon import Daemon

from .e2e_net_helpers import HTTPD, run_d, udp_echo, wait_http

ENGCTL = [sys.executable, "-m", "engine.cli.main"]

# A UDP echo server inside the container: the host's python, run from the host's root
# mounted read-only (busybox's nc has no UDP); it runs in the container's namespace.
UDP_ECHO = (
    "import socket\n"
    "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
    "s.bind(('0.0.0.0', 5353))\n"
    "while True:\n"
    "    data, peer = s.recvfrom(65536)\n"
    "    s.sendto(b'echo:' + data, peer)\n"
)


def test_http_server_answers_on_its_published_ports(engine: Daemon) -> None:
    fixed = free_port()
    cid = run_d(engine, network="bridge", publish=[f"{fixed}:80", "8081"], cmd=[
        "sh", "-c", HTTPD.format(text="eighty", port=80) + " & " + HTTPD.format(text="other", port=8081)])
    assert wait_http(f"http://127.0.0.1:{fixed}/") == "eighty\n"
    # -p CTR: the host port was chosen at create and is what inspect (engctl port) shows.
    info = engine.call("container.inspect", id=cid)
    published = info["NetworkSettings"]["Ports"]
    assert published["80/tcp"] == [{"HostIp": "0.0.0.0", "HostPort": str(fixed)}]
    chosen = int(published["8081/tcp"][0]["HostPort"])
    assert chosen > 0 and chosen != fixed
    assert wait_http(f"http://127.0.0.1:{chosen}/") == "other\n"
    # The container got an address on the default network, shown like docker shows it.
    ip = info["NetworkSettings"]["IPAddress"]
    assert ipaddress.ip_address(ip) in ipaddress.ip_network(engine.net.subnet)
    assert info["NetworkSettings"]["Networks"]["bridge"]["IPAddress"] == ip
    assert wait_http(f"http://{ip}/") == "eighty\n"
    summary = engine.call("container.list")[0]
    assert {(p["PublicPort"], p["PrivatePort"]) for p in summary["Ports"]} == {(fixed, 80), (chosen, 8081)}
    # Not checked here: that a restart keeps the ports. A container started again after a
    # stop is often killed at once (exit 137) by the life cycle, networking or not.


def test_engctl_expose_and_publish_all(engine: Daemon) -> None:
    """`engctl run --expose PORT -P`: the port the image does not expose gets a host port,
    `engctl port` shows it and the server answers there; a bad --expose says what is wrong."""
    env = {**os.environ, "ENGINE_HOST": engine.host}
    started = subprocess.run(
        [*ENGCTL, "run", "-d", "--network", "bridge", "--expose", "8000", "-P", "busybox",
         "sh", "-c", HTTPD.format(text="exposed", port=8000)], capture_output=True, text=True, env=env, timeout=60)
    assert started.returncode == 0, started.stderr
    shown = subprocess.run([*ENGCTL, "port", started.stdout.strip()], capture_output=True, text=True, env=env,
                           timeout=30).stdout
    port = re.fullmatch(r"8000/tcp -> 0\.0\.0\.0:(\d+)\n", shown)
    assert port, shown
    assert wait_http(f"http://127.0.0.1:{port[1]}/") == "exposed\n"
    refused = subprocess.run([*ENGCTL, "run", "-d", "--expose", "80/icmp", "busybox", "true"],
                             capture_output=True, text=True, env=env, timeout=30)
    assert refused.returncode == 125 and "invalid --expose value '80/icmp': unknown protocol" in refused.stderr


def test_udp_echo_over_a_published_udp_port(engine: Daemon) -> None:
    port = free_port("udp")
    run_d(engine, network="bridge", publish=[f"{port}:5353/udp"], volumes=["/:/host:ro"],
          cmd=["chroot", "/host", "/usr/bin/python3", "-c", UDP_ECHO])
    assert udp_echo(port, b"ping") == b"echo:ping"


def test_a_host_port_is_published_once(runc_engine: Daemon) -> None:
    """docker's port allocator: a second container publishing a taken host port fails to
    start in dockerd's words (both would run, and only one be reached); once the first
    stops, it starts. Another address's port, or another protocol, is not a clash."""
    engine = runc_engine
    port = free_port()
    first = run_d(engine, name="first", network="bridge", publish=[f"{port}:80"], cmd=["sleep", "300"])
    second = engine.call("container.create", image="busybox", name="second", network="bridge",
                         publish=[f"127.0.0.1:{port}:80"], cmd=["sleep", "300"])["Id"]
    with pytest.raises(Conflict, match=f"Bind for 127.0.0.1:{port} failed: port is already allocated"):
        engine.call("container.start", id=second)
    assert engine.call("container.inspect", id=second)["State"]["Running"] is False
    udp = run_d(engine, name="udp", network="bridge", publish=[f"{port}:80/udp"], cmd=["sleep", "300"])
    engine.call("container.stop", id=first, timeout=0)
    engine.call("container.start", id=second)
    assert engine.call("container.inspect", id=second)["State"]["Running"] is True
    for cid in (first, second, udp):
        engine.call("container.remove", id=cid, force=True)
