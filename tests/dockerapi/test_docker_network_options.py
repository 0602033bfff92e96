"""docker's network create options (``-o``), ``--ip-range``, ``--aux-address`` and
``--mac-address`` through engine's Docker API: the docker CLIs (the current one sends the
MAC in ``EndpointsConfig``, Debian's 20.10 in ``Config.MacAddress``) and docker-py against a
real engined with a bridge, and one side-by-side run against a private dockerd comparing
refusals and what ``network inspect`` shows (Options, IPAM)."""

from __future__ import annotations

import ipaddress
import json
import re
import secrets
import subprocess
from pathlib import Path

import pytest

from engine.testing import dockerd as dockerd_support

from .conftest import Engine, EngineFactory, at, own_subnet

MAC = "02:42:ac:11:00:43"
MTU = "com.docker.network.driver.mtu"
BRIDGE = "com.docker.network.bridge.name"
MASQ = "com.docker.network.bridge.enable_ip_masquerade"


@pytest.fixture
def engine(make_engine: EngineFactory, busybox_archive: Path) -> Engine:
    """A daemon whose default network is its bridge, with busybox loaded."""
    return make_engine(load_busybox=busybox_archive, network="bridge")


def link_exists(name: str) -> bool:
    return subprocess.run(["ip", "link", "show", "dev", name], capture_output=True).returncode == 0


def test_options_ip_range_aux_and_mac(engine: Engine) -> None:
    subnet = own_subnet(engine, 1)
    bridge = f"eo{secrets.token_hex(4)}"
    engine.docker("network", "create", "--subnet", str(subnet), "--ip-range", f"{at(subnet, 64)}/29",
                  "--aux-address", f"res={at(subnet, 66)}", "-o", f"{MTU}=1400", "-o", f"{BRIDGE}={bridge}",
                  "-o", f"{MASQ}=false", "tuned")
    shown = json.loads(engine.docker("network", "inspect", "tuned").stdout)[0]
    assert shown["Options"] == {MTU: "1400", BRIDGE: bridge, MASQ: "false"}
    config = shown["IPAM"]["Config"][0]
    assert (config["Subnet"], config["IPRange"], config["AuxiliaryAddresses"]) == (
        str(subnet), f"{at(subnet, 64)}/29", {"res": at(subnet, 66)})
    # the current CLI sends the MAC in EndpointsConfig, Debian's 20.10 in Config.MacAddress
    engine.docker("run", "-d", "--name", "new", "--network", "tuned", "--mac-address", MAC, "busybox", "sleep", "600")
    old_mac = "02:42:ac:11:00:44"
    engine.docker("run", "-d", "--name", "old", "--network", "tuned", "--mac-address", old_mac, "busybox",
                  "sleep", "600", binary=dockerd_support.DOCKER_CLI)
    for name, mac in (("new", MAC), ("old", old_mac)):
        link = engine.docker("exec", name, "ip", "link", "show", "eth0").stdout
        assert f"link/ether {mac}" in link and "mtu 1400" in link, link
        ns = json.loads(engine.docker("inspect", "-f", "{{json .NetworkSettings}}", name).stdout)
        assert ns["MacAddress"] == mac and ns["Networks"]["tuned"]["MacAddress"] == mac
        assert engine.docker("inspect", "-f", "{{.Config.MacAddress}}", name).stdout.strip() == mac
    addresses = {json.loads(engine.docker("inspect", "-f", "{{json .NetworkSettings.Networks.tuned}}", n).stdout)
                 ["IPAddress"] for n in ("new", "old")}
    # the range's first address is the gateway (dockerd's choice), the aux address skipped
    assert addresses == {at(subnet, 65), at(subnet, 67)}
    assert "mtu 1400" in subprocess.run(["ip", "link", "show", "dev", bridge], capture_output=True,
                                        text=True).stdout
    # kept at a restart
    engine.docker("restart", "-t", "1", "new")
    assert f"link/ether {MAC}" in engine.docker("exec", "new", "ip", "link", "show", "eth0").stdout

    # docker-py: the endpoint's MacAddress; malformed refused with 400 in dockerd's words
    import docker.errors

    api = engine.docker_py().api
    created = api.create_container("busybox", ["sleep", "600"], host_config={"NetworkMode": "tuned"},
                                   networking_config={"EndpointsConfig": {"tuned": {"MacAddress": "02:42:ac:11:00:45"}}})
    engine.docker("start", created["Id"])
    assert "02:42:ac:11:00:45" in engine.docker("exec", created["Id"], "ip", "link", "show", "eth0").stdout
    with pytest.raises(docker.errors.APIError) as raised:
        api.create_container("busybox", host_config={"NetworkMode": "tuned"},
                             networking_config={"EndpointsConfig": {"tuned": {"MacAddress": "zz"}}})
    assert raised.value.status_code == 400 and "zz is not a valid mac address" in str(raised.value)
    with pytest.raises(docker.errors.APIError) as raised:
        api.create_container("busybox", host_config={"NetworkMode": "host"}, mac_address=MAC)
    assert raised.value.status_code == 400
    assert "conflicting options: mac-address and the network mode" in str(raised.value)
    with pytest.raises(docker.errors.APIError) as raised:
        api.create_network("odd", options={"com.docker.network.bridge.host_binding_ipv4": "127.0.0.1"})
    assert raised.value.status_code == 400 and "host_binding_ipv4" in str(raised.value)

    engine.docker("rm", "-f", "new", "old", created["Id"])
    engine.docker("network", "rm", "tuned")
    assert not link_exists(bridge)


# --- side by side with dockerd ----------------------------------------------------------------


def _message(stderr: str) -> str:
    """The daemon's (or CLI's) message, the CLI's own decoration dropped."""
    text = stderr.strip().splitlines()[0] if stderr.strip() else ""
    text = re.sub(r"^(docker: )?Error response from daemon: ", "", text)
    return text.rstrip(".")


def test_refusals_and_inspect_as_dockerd(engine: Engine, dockerd: dockerd_support.Dockerd) -> None:
    """The same docker commands against both, each on its own subnets and bridge names: the
    same exit codes, dockerd's words in engine's message (ids and names normalised), and
    the same Options and IPAM Config in network inspect."""
    ours_nets = (own_subnet(engine, 5), own_subnet(engine, 6))
    theirs_nets = (own_subnet(engine, 7), own_subnet(engine, 8))
    ours_br, theirs_br = f"eo{secrets.token_hex(4)}", f"eo{secrets.token_hex(4)}"

    def fill(args: tuple[str, ...], nets: tuple[ipaddress.IPv4Network, ...], br: str) -> list[str]:
        out = []
        for a in args:
            for i, net in enumerate(nets):
                a = a.replace(f"{{net{i}}}", str(net)).replace(f"{{ip{i}}}", str(net.network_address)[:-1])
            out.append(a.replace("{br}", br))
        return out

    def normal(text: str, nets: tuple[ipaddress.IPv4Network, ...], br: str) -> str:
        for i, net in enumerate(nets):
            text = text.replace(str(net.network_address)[:-1], f"NET{i}.")
        return re.sub(r"[0-9a-f]{64}", "ID", text.replace(br, "BR"))

    def both(*args: str) -> tuple[subprocess.CompletedProcess[str], subprocess.CompletedProcess[str]]:
        return (engine.docker(*fill(args, ours_nets, ours_br), check=False, binary=dockerd_support.DOCKER_CLI),
                dockerd.cli(*fill(args, theirs_nets, theirs_br), binary=dockerd_support.DOCKER_CLI))

    try:
        ours, theirs = both("network", "create", "--subnet", "{net0}", "--ip-range", "{ip0}128/28",
                            "--aux-address", "a={ip0}130", "--aux-address", "b={ip0}200",
                            "-o", f"{MTU}=1400", "-o", f"{BRIDGE}={{br}}", "-o", f"{MASQ}=false", "vsopts")
        assert (ours.returncode, theirs.returncode) == (0, 0), (ours.stderr, theirs.stderr)
        cases = {
            "mtu": ("network", "create", "--subnet", "{net1}", "-o", f"{MTU}=abc", "vsbad"),
            "masquerade": ("network", "create", "--subnet", "{net1}", "-o", f"{MASQ}=maybe", "vsbad"),
            "long bridge": ("network", "create", "--subnet", "{net1}", "-o", f"{BRIDGE}=abcdefghijklmnopq", "vsbad"),
            "not a bridge": ("network", "create", "--subnet", "{net1}", "-o", f"{BRIDGE}=lo", "vsbad"),
            "same bridge": ("network", "create", "--subnet", "{net1}", "-o", f"{BRIDGE}={{br}}", "vsbad"),
            "range outside": ("network", "create", "--subnet", "{net1}", "--ip-range", "{ip0}0/28", "vsbad"),
            "range without subnet": ("network", "create", "--ip-range", "{ip1}0/28", "vsbad"),
            "aux outside": ("network", "create", "--subnet", "{net1}", "--aux-address", "x={ip0}9", "vsbad"),
            "aux on gateway": ("network", "create", "--subnet", "{net1}", "--gateway", "{ip1}1",
                               "--aux-address", "x={ip1}1", "vsbad"),
            "mac malformed": ("run", "-d", "--network", "vsopts", "--mac-address", "zz:42", "busybox", "true"),
            "mac on host": ("run", "-d", "--network", "host", "--mac-address", MAC, "busybox", "true"),
        }
        for what, args in cases.items():
            ours, theirs = both(*args)
            assert theirs.returncode != 0, (what, theirs.stdout)  # a refusal on dockerd's side too
            assert ours.returncode == theirs.returncode, (what, ours.stderr, theirs.stderr)
            ours_text = normal(_message(ours.stderr), ours_nets, ours_br)
            theirs_text = normal(_message(theirs.stderr), theirs_nets, theirs_br)
            assert theirs_text in ours_text, (what, ours_text, theirs_text)
        ours, theirs = both("network", "ls", "-q", "--filter", "name=vsbad")
        assert ours.stdout.strip() == theirs.stdout.strip() == ""

        ours, theirs = both("network", "inspect", "-f", "{{json .Options}}", "vsopts")
        assert json.loads(normal(ours.stdout, ours_nets, ours_br)) == json.loads(
            normal(theirs.stdout, theirs_nets, theirs_br))
        ours, theirs = both("network", "inspect", "-f", "{{json .IPAM.Config}}", "vsopts")
        ours_ipam = json.loads(normal(ours.stdout, ours_nets, ours_br))
        theirs_ipam = json.loads(normal(theirs.stdout, theirs_nets, theirs_br))
        # engine shows the gateway it chose (dockerd's choice: the range's first address);
        # dockerd shows only a gateway that was given
        assert ours_ipam[0].pop("Gateway") == "NET0.128"
        assert ours_ipam == theirs_ipam

        # containers: the range's addresses, the aux ones skipped, the MAC given
        for name in ("vs1", "vs2"):
            ours, theirs = both("run", "-d", "--name", name, "--network", "vsopts", "busybox", "sleep", "600")
            assert (ours.returncode, theirs.returncode) == (0, 0), (ours.stderr, theirs.stderr)
        ours, theirs = both("run", "-d", "--name", "vsmac", "--network", "vsopts", "--mac-address", MAC,
                            "busybox", "sleep", "600")
        assert (ours.returncode, theirs.returncode) == (0, 0), (ours.stderr, theirs.stderr)
        for name in ("vs1", "vs2", "vsmac"):
            fmt = "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{.MacAddress}}{{end}}"
            ours, theirs = both("inspect", "-f", fmt, name)
            ours_ip, ours_mac = normal(ours.stdout, ours_nets, ours_br).split()
            theirs_ip, theirs_mac = normal(theirs.stdout, theirs_nets, theirs_br).split()
            assert ours_ip == theirs_ip, name
            if name == "vsmac":
                assert ours_mac == theirs_mac == MAC
            ours, theirs = both("exec", name, "ip", "link", "show", "eth0")
            assert "mtu 1400" in ours.stdout and "mtu 1400" in theirs.stdout
    finally:
        dockerd.remove_all()
        for name in ("vs1", "vs2", "vsmac"):
            engine.docker("rm", "-f", name, check=False)
        engine.docker("network", "rm", "vsopts", check=False)
