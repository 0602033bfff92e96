"""Fixtures for the CRI: a real engined serving ``--cri-socket`` with a CNI configuration of
its own (a bridge and subnet from the daemon's test network slot), the prebuilt crictl and
critest of ../shared/cri-tools (unpacked by its install.sh), and its loopback registry of
critest's substitute images (``peer.sh registry``), reached through per-host mirrors for
registry.k8s.io and gcr.io. Pods, CNI state, the bridge, the egress guard and a registry the
fixtures started are all removed at the end, even when a test fails.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest

from engine.testing.daemon import Daemon, claim_net_slot, in_ci, require, require_binary

REPO = Path(__file__).resolve().parents[2]
CRIT_STATE = Path(os.environ.get("CRIT_STATE", "/var/tmp/cri-tools"))
REGISTRY = "127.0.0.1:5600"
GUARD_COMMENT = "engine-cri-test-egress-guard"


def cri_tools_dir() -> Path | None:
    """../shared/cri-tools beside the checkout (or $ENGINE_CRI_TOOLS)."""
    if os.environ.get("ENGINE_CRI_TOOLS"):
        return Path(os.environ["ENGINE_CRI_TOOLS"])
    for base in (REPO.parent, REPO.parent.parent):
        if (base / "shared" / "cri-tools" / "install.sh").exists():
            return base / "shared" / "cri-tools"
    return None


@pytest.fixture(autouse=True)
def _needs_root(request: pytest.FixtureRequest) -> None:
    if "cri" not in request.fixturenames:
        return
    if os.geteuid() != 0:
        if in_ci():
            pytest.fail("CRI end-to-end tests run pods and need root")
        pytest.skip("needs root")
    for binary in ("runc", "conmon", "catatonit", "docker-registry", "iptables"):
        require_binary(binary)
    require(Path("/usr/lib/cni/bridge").exists(), "CNI plugins missing (containernetworking-plugins)")


@pytest.fixture(scope="session")
def cri_tools() -> Path:
    """The directory holding crictl and critest (install.sh unpacks them; idempotent)."""
    tools = cri_tools_dir()
    require(tools is not None, "../shared/cri-tools is not beside this checkout")
    assert tools is not None
    proc = subprocess.run([str(tools / "install.sh")], capture_output=True, text=True, timeout=300)
    require(proc.returncode == 0, f"cri-tools install.sh failed: {proc.stderr[-500:]}")
    bin_dir = Path(proc.stdout.strip().splitlines()[-1])
    require((bin_dir / "crictl").exists() and (bin_dir / "critest").exists(),
            f"crictl/critest not found in {bin_dir}")
    return bin_dir


def _registry_up() -> bool:
    try:
        with urllib.request.urlopen(f"http://{REGISTRY}/v2/", timeout=2):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def cri_registry() -> Iterator[str]:
    """critest's substitute images on 127.0.0.1:5600 (peer.sh registry builds and pushes
    them; a registry we started is stopped afterwards)."""
    tools = cri_tools_dir()
    require(tools is not None, "../shared/cri-tools is not beside this checkout")
    assert tools is not None
    # Test runs beside each other (this host runs several) share the one registry: each holds
    # a shared lock on USERS_LOCK while it uses it, and the last one to leave stops it, if
    # a test run started it (marked by STARTED_BY_TESTS). Stopping it when the run that
    # started it ended once broke a run still pulling from it.
    CRIT_STATE.mkdir(parents=True, exist_ok=True)
    users = os.open(CRIT_STATE / "registry-users.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    fcntl.flock(users, fcntl.LOCK_SH)
    started_by_tests = CRIT_STATE / "registry-started-by-tests"
    try:
        with _exclusive(CRIT_STATE / "registry-start.lock"):  # one peer.sh at a time
            if not _registry_up():
                started_by_tests.touch()
            proc = subprocess.run([str(tools / "peer.sh"), "registry"], capture_output=True, text=True,
                                  timeout=600)
        require(proc.returncode == 0, f"peer.sh registry failed: {proc.stderr[-800:]}")
        yield REGISTRY
    finally:
        with _exclusive(CRIT_STATE / "registry-start.lock"):
            try:
                fcntl.flock(users, fcntl.LOCK_EX | fcntl.LOCK_NB)  # no other run uses it
                last = True
            except BlockingIOError:
                last = False
            if last and started_by_tests.exists():
                pid_file = CRIT_STATE / "registry" / "registry.pid"
                try:
                    os.kill(int(pid_file.read_text().strip()), 15)
                except (OSError, ValueError):
                    pass
                pid_file.unlink(missing_ok=True)
                started_by_tests.unlink(missing_ok=True)
        os.close(users)


@contextlib.contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _uplinks() -> list[str]:
    out = subprocess.run(["ip", "-o", "route", "show", "default"], capture_output=True, text=True).stdout
    return sorted({line.split()[4] for line in out.splitlines() if len(line.split()) > 4})


@attrs.define
class CRI:
    daemon: Daemon
    endpoint: str
    crictl_bin: Path
    bin_dir: Path
    pod_subnet: str
    pod_bridge: str

    def crictl(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([str(self.crictl_bin), "--timeout", "60s", "-r", self.endpoint,
                               "-i", self.endpoint, *args], capture_output=True, text=True,
                              timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"crictl {' '.join(args)} failed ({proc.returncode}): "
                                 f"{proc.stderr}\n--- daemon log ---\n{self.daemon.log()[-3000:]}")
        return proc

    def remove_all_pods(self) -> None:
        for pod in self.crictl("pods", "-q", check=False).stdout.split():
            self.crictl("stopp", pod, check=False)
            self.crictl("rmp", pod, check=False)


@pytest.fixture
def cri(tmp_path: Path, cri_tools: Path, cri_registry: str) -> Iterator[CRI]:
    slot = claim_net_slot()
    # The pod network: the last /24 of the slot's pool (the daemon's own networks use the
    # first ones), on a bridge named after the slot.
    pool = ipaddress.IPv4Network(slot.pool)
    subnet = str(list(pool.subnets(new_prefix=24))[-1])
    bridge = f"{slot.bridge}c"
    conf_dir = tmp_path / "cni"
    conf_dir.mkdir()
    (conf_dir / "10-engine-cri-test.conflist").write_text(json.dumps({
        "cniVersion": "0.4.0", "name": f"cri-{slot.bridge}",
        "plugins": [
            {"type": "bridge", "bridge": bridge, "isGateway": True, "ipMasq": False,
             "hairpinMode": True,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": subnet}]],
                      "routes": [{"dst": subnet}], "dataDir": str(tmp_path / "ipam")}},
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ]}))
    socket = tmp_path / "cri.sock"
    daemon = Daemon(extra_args=[
        *slot.args(), "--cri-socket", f"unix://{socket}", "--cni-conf-dir", str(conf_dir),
        "--cni-bin-dir", "/usr/lib/cni",
        # searched only for a conflist naming a plugin /usr/lib/cni lacks (a test's own)
        "--cni-bin-dir", str(tmp_path / "cni-bin"),
        "--registry-mirror", f"registry.k8s.io=http://{REGISTRY}",
        "--registry-mirror", f"gcr.io=http://{REGISTRY}", "--insecure-registry", REGISTRY,
    ])
    guards = [["-t", "mangle", "FORWARD", "-o", dev, "-j", "DROP", "-m", "comment",
               "--comment", GUARD_COMMENT] for dev in _uplinks()]
    for rule in guards:
        subprocess.run(["iptables", rule[0], rule[1], "-I", *rule[2:]], check=True)
    handle = CRI(daemon, f"unix://{socket}", cri_tools / "crictl", cri_tools, subnet, bridge)
    try:
        daemon.start()
        yield handle
    finally:
        try:
            if daemon.proc is not None and daemon.proc.poll() is None:
                handle.remove_all_pods()
        finally:
            daemon.cleanup()
            slot.release()
            for rule in guards:
                subprocess.run(["iptables", rule[0], rule[1], "-D", *rule[2:]], check=False)
            subprocess.run(["ip", "link", "del", bridge], capture_output=True, check=False)
            shutil.rmtree(tmp_path / "ipam", ignore_errors=True)
