"""Names on user-defined networks, isolation between networks, and the none/host modes."""

from __future__ import annotations

import os

import pytest

from engine.errors import Conflict, InvalidArgument
from engine.testing.daemon import Daemon

from .e2e_net_helpers import HTTPD, host_links, run_attached, run_d, wait_http

# Names resolve through /etc/hosts only: a nameserver nobody serves makes a failed lookup
# fail at once instead of waiting on the host's resolver (which the egress guard blocks).
LOCAL_DNS = ["127.0.0.1"]
GET = "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {host} 80"


def _interfaces(proc_net_dev: str) -> list[str]:
    return sorted(line.split(":")[0].strip() for line in proc_net_dev.splitlines()[2:] if ":" in line)


def test_containers_on_a_network_reach_each_other_by_name_and_alias(engine: Daemon) -> None:
    engine.call("network.create", name="e2eapp")
    engine.call("network.create", name="e2eother")
    web = run_d(engine, name="web", network="e2eapp", network_aliases=["www"], dns=LOCAL_DNS,
                cmd=["sh", "-c", HTTPD.format(text="from-web", port=80)])
    ip = engine.call("container.inspect", id=web)["NetworkSettings"]["Networks"]["e2eapp"]["IPAddress"]
    wait_http(f"http://{ip}/")  # the host reaches it; now from a peer, by name and by alias
    code, out = run_attached(engine, network="e2eapp", dns=LOCAL_DNS, cmd=[
        "sh", "-c", f"{GET.format(host='web')} && {GET.format(host='www')} && ping -c 1 -W 2 web"])
    assert code == 0, out
    assert out.count("from-web") == 2 and f"({ip})" in out
    # The network shows the attached container.
    info = engine.call("network.inspect", id="e2eapp")
    assert info["Containers"][web]["Name"] == "web"
    assert info["Containers"][web]["IPv4Address"].startswith(ip + "/")
    with pytest.raises(Conflict, match="attached"):
        engine.call("network.remove", id="e2eapp")
    # Another network neither resolves the name nor routes to the address.
    code, out = run_attached(engine, network="e2eother", dns=LOCAL_DNS, cmd=[
        "sh", "-c", f"{GET.format(host='web')}; {GET.format(host=ip).replace('-w 3', '-w 1')}; ping -c 1 -W 1 {ip} && echo REACHED"])
    assert "from-web" not in out and "REACHED" not in out
    # Connected at run time, the other side's container finds it (and docker's inspect says so).
    other = run_d(engine, name="client", network="e2eother", dns=LOCAL_DNS, cmd=["sleep", "1000"])
    engine.call("network.connect", network="e2eapp", container="client", aliases=["cli"])
    code, out = run_attached(engine, network="e2eapp", dns=LOCAL_DNS, cmd=["ping", "-c", "1", "-W", "2", "cli"])
    assert code == 0, out
    networks = engine.call("container.inspect", id=other)["NetworkSettings"]["Networks"]
    assert {"e2eapp", "e2eother"} <= set(networks)
    engine.call("network.disconnect", network="e2eapp", container="client")
    code, out = run_attached(engine, network="e2eapp", dns=LOCAL_DNS, cmd=["ping", "-c", "1", "-W", "1", "cli"])
    assert code != 0
    engine.call("container.remove", id=web, force=True)
    engine.call("network.remove", id="e2eapp")
    assert "e2eapp" not in [n["Name"] for n in engine.call("network.list")]


def test_network_none_has_only_loopback(runc_engine: Daemon) -> None:
    code, out = run_attached(runc_engine, network="none", cmd=[
        "sh", "-c", "cat /proc/net/dev; cat /etc/hostname; grep -c localhost /etc/hosts"])
    assert code == 0, out
    assert _interfaces(out) == ["lo"]
    with pytest.raises(InvalidArgument, match="publish"):
        runc_engine.call("container.create", image="busybox", network="none", publish=["80"], cmd=["true"])


def test_network_host_sees_the_hosts_interfaces(runc_engine: Daemon) -> None:
    code, out = run_attached(runc_engine, network="host", cmd=["cat", "/proc/net/dev"])
    assert code == 0, out
    assert set(_interfaces(out)) & set(host_links()) >= {"lo", *[i for i in host_links() if i.startswith("eth")]}
    assert len(_interfaces(out)) > 1


def test_network_container_shares_the_namespace(runc_engine: Daemon) -> None:
    runc_engine.call("network.create", name="e2eshare")
    run_d(runc_engine, name="owner", network="e2eshare",
          cmd=["sh", "-c", HTTPD.format(text="shared", port=80)])
    code, out = run_attached(runc_engine, network="container:owner", cmd=[
        "sh", "-c", f"{GET.format(host='127.0.0.1')}; cat /proc/net/dev"])
    assert code == 0, out
    assert "shared" in out and "eth0" in _interfaces(out.split("\r\n\r\n")[-1])


def test_network_none_namespace_is_made_by_the_runtime_and_can_be_shared(runc_engine: Daemon) -> None:
    owner = run_d(runc_engine, name="lonely", network="none", cmd=["sleep", "1000"])
    pid = runc_engine.call("container.inspect", id=owner)["State"]["Pid"]
    # no namespace file, mount or CNI state: the runtime made the namespace
    netns_dir = runc_engine.run_root / "netns"
    assert not (netns_dir / owner).exists()
    code, out = run_attached(runc_engine, network="container:lonely", cmd=[
        "sh", "-c", "readlink /proc/self/ns/net; cat /proc/net/dev"])
    assert code == 0, out
    assert out.splitlines()[0] == os.readlink(f"/proc/{pid}/ns/net")
    assert _interfaces(out) == ["lo"]
    assert os.readlink(f"/proc/{pid}/ns/net") != os.readlink("/proc/self/ns/net")


def test_run_rm_then_network_and_volume_rm_at_once(engine: Daemon) -> None:
    """`engctl run --rm` answers once its container is gone and frees its network and
    mounts after: a network or volume removal on the script's next line waits for that
    instead of finding the container still attached."""
    import subprocess
    import sys

    def engctl(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "engine.cli.main", *args], capture_output=True,
                              text=True, timeout=120, env={**os.environ, "ENGINE_HOST": engine.host})

    for round_ in range(3):
        assert engctl("network", "create", f"rmnet{round_}").returncode == 0
        ran = engctl("run", "--rm", "--network", f"rmnet{round_}", "-v", f"rmvol{round_}:/data",
                     "busybox", "sh", "-c", "echo x > /data/x")
        assert ran.returncode == 0, ran.stderr
        removed = engctl("network", "rm", f"rmnet{round_}")
        assert removed.returncode == 0, removed.stderr
        removed = engctl("volume", "rm", f"rmvol{round_}")
        assert removed.returncode == 0, removed.stderr
