"""A container's own IPv4 address (``docker run --ip``, ``network connect --ip``, compose's
``ipv4_address``) through engine's Docker API: the docker CLI and Debian's docker-compose
1.29 against a real engined with a bridge, and one side-by-side run against a private
dockerd comparing its refusals and what inspect shows (IPAMConfig)."""

from __future__ import annotations

import ipaddress
import json
import re
import subprocess
from pathlib import Path

import pytest

from engine.testing import dockerd as dockerd_support

from .conftest import Engine, EngineFactory, at, own_subnet
from .test_compose import compose_runner


@pytest.fixture
def engine(make_engine: EngineFactory, busybox_archive: Path) -> Engine:
    """A daemon whose default network is its bridge, with busybox loaded."""
    return make_engine(load_busybox=busybox_archive, network="bridge")


def networks_of(engine: Engine, ref: str) -> dict[str, dict[str, object]]:
    shown = engine.docker("inspect", "-f", "{{json .NetworkSettings.Networks}}", ref)
    return json.loads(shown.stdout)  # type: ignore[no-any-return]


def test_run_and_connect_with_ip(engine: Engine) -> None:
    front, back = own_subnet(engine, 1), own_subnet(engine, 2)
    engine.docker("network", "create", "--subnet", str(front), "front")
    engine.docker("network", "create", "--subnet", str(back), "back")
    engine.docker("run", "-d", "--name", "app", "--network", "front", "--ip", at(front, 10), "busybox",
                  "sleep", "600")
    app = networks_of(engine, "app")["front"]
    assert app["IPAMConfig"] == {"IPv4Address": at(front, 10)} and app["IPAddress"] == at(front, 10)
    shown = engine.docker("exec", "app", "ip", "-4", "-o", "addr", "show", "eth0").stdout
    assert f"inet {at(front, 10)}/24" in shown
    engine.docker("network", "connect", "--ip", at(back, 11), "back", "app")
    app = networks_of(engine, "app")["back"]
    assert app["IPAMConfig"] == {"IPv4Address": at(back, 11)} and app["IPAddress"] == at(back, 11)
    # a peer reaches it at both addresses
    for net, ip in (("front", at(front, 10)), ("back", at(back, 11))):
        ping = engine.docker("run", "--rm", "--network", net, "busybox", "ping", "-c", "1", "-W", "2", ip,
                             check=False)
        assert ping.returncode == 0, ping.stdout + ping.stderr
    # stopped: inspect still shows what it asked for; started: it has it again
    engine.docker("stop", "-t", "1", "app")
    assert networks_of(engine, "app")["front"]["IPAMConfig"] == {"IPv4Address": at(front, 10)}
    engine.docker("start", "app")
    assert {n: e["IPAddress"] for n, e in networks_of(engine, "app").items()} == {
        "front": at(front, 10), "back": at(back, 11)}
    # a container without --ip shows IPAMConfig null, as dockerd
    engine.docker("run", "-d", "--name", "plain", "--network", "front", "busybox", "sleep", "600")
    assert networks_of(engine, "plain")["front"]["IPAMConfig"] is None

    # refusals: the default bridge, an address another container holds, a malformed one
    ran = engine.docker("run", "-d", "--ip", at(front, 20), "busybox", "sleep", "600", check=False)
    assert ran.returncode == 125
    assert "user specified IP address is supported on user defined networks only" in ran.stderr
    ran = engine.docker("run", "-d", "--network", "front", "--ip", at(front, 10), "busybox", "true",
                        check=False)
    assert ran.returncode == 125 and f"Address already in use: {at(front, 10)}" in ran.stderr
    assert "held by container app" in ran.stderr
    ran = engine.docker("run", "-d", "--network", "front", "--ip", "10.0.0.300", "busybox", "true",
                        check=False)
    assert ran.returncode == 125 and "invalid IPv4 address: 10.0.0.300" in ran.stderr
    connected = engine.docker("network", "connect", "--ip", at(back, 11), "back", "plain", check=False)
    assert connected.returncode == 1 and f"Address already in use: {at(back, 11)}" in connected.stderr
    assert engine.docker("inspect", "-f", "{{.State.Running}}", "app").stdout.strip() == "true"
    # the Docker API's own shape: a 400 for a malformed address, IPv6 refused by name
    created = engine.docker_py().api.create_container(
        "busybox", ["sleep", "600"], networking_config={"EndpointsConfig": {"front": {"IPAMConfig": {"IPv4Address": at(front, 30)}}}},
        host_config={"NetworkMode": "front"})
    engine.docker("start", created["Id"])
    assert networks_of(engine, created["Id"])["front"]["IPAddress"] == at(front, 30)
    import docker.errors

    with pytest.raises(docker.errors.APIError) as raised:
        engine.docker_py().api.create_container(
            "busybox", networking_config={"EndpointsConfig": {"front": {"IPAMConfig": {"IPv4Address": "x"}}}},
            host_config={"NetworkMode": "front"})
    assert raised.value.status_code == 400 and "invalid IPv4 address: x" in str(raised.value)
    with pytest.raises(docker.errors.APIError) as raised:
        engine.docker_py().api.create_container(
            "busybox", networking_config={"EndpointsConfig": {"front": {"IPAMConfig": {"IPv6Address": "fd00::5"}}}},
            host_config={"NetworkMode": "front"})
    assert raised.value.status_code == 400 and "IPv6Address" in str(raised.value)


COMPOSE_FILE = """\
version: "2.4"
services:
  web:
    image: busybox
    command: ["sh", "-c", "mkdir -p /www && echo hello-from-web > /www/index.html && exec httpd -f -p 80 -h /www"]
    networks:
      front: {{ipv4_address: {web_front}}}
      back: {{ipv4_address: {web_back}}}
  client:
    image: busybox
    command: ["sleep", "600"]
    networks:
      front: {{ipv4_address: {client_front}}}
networks:
  front:
    ipam:
      config: [{{subnet: "{front}"}}]
  back:
    ipam:
      config: [{{subnet: "{back}"}}]
"""


def test_compose_ipv4_address(engine: Engine, tmp_path: Path) -> None:
    front, back = own_subnet(engine, 3), own_subnet(engine, 4)
    addresses = {"web_front": at(front, 50), "web_back": at(back, 51), "client_front": at(front, 52)}
    (tmp_path / "docker-compose.yml").write_text(COMPOSE_FILE.format(front=front, back=back, **addresses))
    run = compose_runner(engine, tmp_path, "fixed")
    try:
        run("up", "-d")
        web, client = networks_of(engine, "fixed_web_1"), networks_of(engine, "fixed_client_1")
        assert {n: (e["IPAddress"], e["IPAMConfig"]) for n, e in web.items()} == {
            "fixed_front": (addresses["web_front"], {"IPv4Address": addresses["web_front"]}),
            "fixed_back": (addresses["web_back"], {"IPv4Address": addresses["web_back"]})}
        assert client["fixed_front"]["IPAddress"] == addresses["client_front"]
        fetched = run("exec", "-T", "client", "sh", "-c",
                      f"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {addresses['web_front']} 80")
        assert "hello-from-web" in fetched.stdout
        # up again (nothing changed) keeps them; a restart gives them back
        run("restart", "-t", "1")
        web = networks_of(engine, "fixed_web_1")
        assert web["fixed_back"]["IPAddress"] == addresses["web_back"]
        assert web["fixed_front"]["IPAddress"] == addresses["web_front"]
    finally:
        down = run("down", "--timeout", "1", check=False)
    assert down.returncode == 0, down.stderr
    assert engine.daemon.call("container.list", all=True) == []
    assert not {"fixed_front", "fixed_back"} & {n["Name"] for n in engine.daemon.call("network.list")}


# --- side by side with dockerd ----------------------------------------------------------------


def _message(stderr: str) -> str:
    """The daemon's message in the CLI's error output (the CLI's own decoration dropped)."""
    text = stderr.strip().splitlines()[0] if stderr.strip() else ""
    text = re.sub(r"^(docker: )?Error response from daemon: ", "", text)
    return text.rstrip(".")


def test_static_ip_refusals_and_inspect_as_dockerd(engine: Engine, dockerd: dockerd_support.Dockerd) -> None:
    """The same docker commands against both (each on its own subnet, as two bridges with
    one subnet would fight over the host's route): the same exit codes, dockerd's words
    at the start of engine's message (engine adds which network or container), and the
    same IPAMConfig in inspect."""
    ours_net, theirs_net = own_subnet(engine, 5), own_subnet(engine, 6)

    def both(*args: str) -> tuple[subprocess.CompletedProcess[str], subprocess.CompletedProcess[str]]:
        def fill(net: ipaddress.IPv4Network) -> list[str]:
            return [a.replace("{net}", str(net)).replace("{ip}", str(net.network_address)[:-1]) for a in args]

        return (engine.docker(*fill(ours_net), check=False, binary=dockerd_support.DOCKER_CLI),
                dockerd.cli(*fill(theirs_net), binary=dockerd_support.DOCKER_CLI))

    def same(ours: subprocess.CompletedProcess[str], theirs: subprocess.CompletedProcess[str], what: str) -> None:
        assert ours.returncode == theirs.returncode, (what, ours.stderr, theirs.stderr)
        ours_text = _message(ours.stderr).replace(str(ours_net.network_address)[:-1], "NET.")
        theirs_text = _message(theirs.stderr).replace(str(theirs_net.network_address)[:-1], "NET.")
        assert ours_text.startswith(theirs_text), (what, ours_text, theirs_text)

    try:
        for setup in (("network", "create", "--subnet", "{net}", "vsip"), ("network", "create", "vspool"),
                      ("run", "-d", "--name", "vs-holder", "--network", "vsip", "--ip", "{ip}5", "busybox",
                       "sleep", "600"),
                      ("run", "-d", "--name", "vs-plain", "--network", "vspool", "busybox", "sleep", "600"),
                      ("create", "--name", "vs-created", "--network", "vsip", "--ip", "{ip}6", "busybox")):
            ours, theirs = both(*setup)
            assert (ours.returncode, theirs.returncode) == (0, 0), (setup, ours.stderr, theirs.stderr)
        cases = {
            "malformed": ("run", "-d", "--network", "vsip", "--ip", "10.1.1.300", "busybox", "true"),
            "pooled": ("run", "-d", "--network", "vspool", "--ip", "{ip}9", "busybox", "true"),
            "outside": ("run", "-d", "--network", "vsip", "--ip", "192.0.2.9", "busybox", "true"),
            "gateway": ("run", "-d", "--network", "vsip", "--ip", "{ip}1", "busybox", "true"),
            "held": ("run", "-d", "--network", "vsip", "--ip", "{ip}5", "busybox", "true"),
            # connected while running: checked as it joins
            "connect outside": ("network", "connect", "--ip", "192.0.2.9", "vsip", "vs-plain"),
            "connect held": ("network", "connect", "--ip", "{ip}5", "vsip", "vs-plain"),
            "connect pooled": ("network", "connect", "--ip", "{ip}9", "vspool", "vs-holder"),
            # not running: the automatic subnet is refused at once (the rest at its start)
            "connect pooled created": ("network", "connect", "--ip", "{ip}9", "vspool", "vs-created"),
        }
        for what, args in cases.items():
            ours, theirs = both(*args)
            assert theirs.returncode != 0, (what, theirs.stdout)  # a refusal on dockerd's side too
            same(ours, theirs, what)
        for ref, net in (("vs-holder", "vsip"), ("vs-plain", "vspool"), ("vs-created", "vsip")):
            ours, theirs = both("inspect", "-f", f"{{{{json .NetworkSettings.Networks.{net}.IPAMConfig}}}}", ref)
            assert ours.returncode == theirs.returncode == 0, (ours.stderr, theirs.stderr)
            assert (ours.stdout.replace(str(ours_net.network_address)[:-1], "NET.")
                    == theirs.stdout.replace(str(theirs_net.network_address)[:-1], "NET.")), ref
        ours, theirs = both("inspect", "-f", "{{.NetworkSettings.Networks.vsip.IPAddress}}", "vs-holder")
        assert ours.stdout.strip() == f"{str(ours_net.network_address)[:-1]}5"
        assert theirs.stdout.strip() == f"{str(theirs_net.network_address)[:-1]}5"
    finally:
        dockerd.remove_all()
