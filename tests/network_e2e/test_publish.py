"""Published ports of real containers answer on the host (TCP and UDP), for runc and crun."""

from __future__ import annotations

import ipaddress

from engine.network.ports import free_port
from engine.testing.daemon import Daemon

from .e2e_net_helpers import HTTPD, run_d, udp_echo, wait_http

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


def test_udp_echo_over_a_published_udp_port(engine: Daemon) -> None:
    port = free_port("udp")
    run_d(engine, network="bridge", publish=[f"{port}:5353/udp"], volumes=["/:/host:ro"],
          cmd=["chroot", "/host", "/usr/bin/python3", "-c", UDP_ECHO])
    assert udp_echo(port, b"ping") == b"echo:ping"
