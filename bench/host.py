"""The host around a benchmark run: scratch storage, cgroups for crun, and the network state
(ip_forward, iptables chains, bridges) that podman's netavark and dockerd change and that we
put back afterwards, because the project's network tests check iptables state."""

from __future__ import annotations

import os
import platform
import re
import shlex
import shutil
import subprocess
import time
from pathlib import Path

import attrs

from bench.timing import run_quiet
from engine.testing.daemon import mounts_under

IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")
# Chains and links the peers create and never remove. The engine's own (its engtNNN bridge
# and ENGINE-ISO-engtNNN-* chains) are checked by EngineD.stop: other engine daemons on the
# host may add and remove theirs meanwhile, so a host-wide diff would blame the wrong one.
PEER_CHAIN = re.compile(r"^(NETAVARK|DOCKER)")
PEER_LINKS = ("docker0", "podman0")
TABLES = ("filter", "nat", "mangle")


# --- scratch storage -------------------------------------------------------------------------


@attrs.define
class Scratch:
    """A fresh filesystem at ``path`` for all benchmark state: a sparse loop-mounted ext4
    (default), a tmpfs, or nothing. The root ext4 here gets slow at creating files for tens of
    seconds after large deletions (peers/README.md §2.7), which would make pulls noisy."""

    path: Path
    kind: str = "loop"  # loop | tmpfs | none
    size: str = "16G"
    image: Path | None = None
    mounted: bool = False

    def mount(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        if self.kind == "none":
            return
        if os.path.ismount(self.path):
            raise RuntimeError(f"{self.path} is already a mount point: unmount it or pick another --workdir")
        if self.kind == "tmpfs":
            run_quiet(["mount", "-t", "tmpfs", "-o", f"size={self.size}", "tmpfs", str(self.path)])
        else:
            self.image = self.path.with_name(self.path.name + ".img")
            self.image.unlink(missing_ok=True)
            run_quiet(["truncate", "-s", self.size, str(self.image)])
            run_quiet(["mkfs.ext4", "-q", "-F", "-E", "nodiscard", str(self.image)])
            run_quiet(["mount", "-o", "loop", str(self.image), str(self.path)])
        self.mounted = True
        # Runtime state (sockets, pid and exit files, the runtimes' own state) lives on a
        # tmpfs, as /run is on any host: the engine's --run-root, podman's runroot and
        # tmp_dir, docker's exec-root. Persistent storage stays on the scratch filesystem.
        self.run_dir.mkdir(parents=True, exist_ok=True)
        run_quiet(["mount", "-t", "tmpfs", "-o", "size=2G,mode=0755", "tmpfs", str(self.run_dir)])

    @property
    def run_dir(self) -> Path:
        return self.path / "run"

    def unmount(self) -> None:
        """Unmount whatever is still mounted below us (overlays of killed containers), then us."""
        for point in sorted(mounts_under(self.path), key=len, reverse=True):
            if point != str(self.path):
                subprocess.run(["umount", "-l", point], capture_output=True)
        if self.mounted:
            for _ in range(50):
                if subprocess.run(["umount", str(self.path)], capture_output=True).returncode == 0:
                    break
                time.sleep(0.2)
            else:
                subprocess.run(["umount", "-l", str(self.path)], capture_output=True)
            self.mounted = False
        if self.image is not None:
            self.image.unlink(missing_ok=True)
        if self.kind != "none":
            shutil.rmtree(self.path, ignore_errors=True)


# --- cgroups --------------------------------------------------------------------------------


def prepare_cgroups() -> str | None:
    """crun refuses hybrid cgroup hosts while cgroup2 holds a controller: move each to a v1
    mount of its own (what scripts/setup.sh does). Returns a warning if that did not work."""
    controllers = Path("/sys/fs/cgroup/unified/cgroup.controllers")
    if not controllers.exists():
        return None
    for c in controllers.read_text().split():
        target = Path("/sys/fs/cgroup") / c
        target.mkdir(exist_ok=True)
        if not os.path.ismount(target):
            subprocess.run(["mount", "-t", "cgroup", "-o", c, "cgroup", str(target)], capture_output=True)
    left = controllers.read_text().split()
    return f"cgroup2 still holds {left}: crun will refuse to run" if left else None


# --- network state --------------------------------------------------------------------------


def _chains(table: str) -> set[str]:
    p = subprocess.run(["iptables", "-t", table, "-S"], capture_output=True, text=True)
    return {line.split()[1] for line in p.stdout.splitlines() if line.startswith("-N ")}


def _links() -> set[str]:
    return set(os.listdir("/sys/class/net"))


@attrs.define
class NetSnapshot:
    ip_forward: str
    chains: dict[str, set[str]]
    links: set[str]

    @classmethod
    def take(cls) -> NetSnapshot:
        return cls(IP_FORWARD.read_text().strip(), {t: _chains(t) for t in TABLES}, _links())

    def restore(self) -> list[str]:
        """Put back ip_forward, delete the peers' new chains (and the rules jumping to them)
        and their bridges. Returns notes on what was undone and what is still different."""
        notes: list[str] = []
        now = IP_FORWARD.read_text().strip()
        if now != self.ip_forward:
            IP_FORWARD.write_text(self.ip_forward + "\n")
            notes.append(f"ip_forward {now} -> {self.ip_forward}")
        for table in TABLES:
            new = _chains(table) - self.chains[table]
            peer = {c for c in new if PEER_CHAIN.match(c)}
            if peer:
                _drop_chains(table, peer)
                notes.append(f"iptables -t {table}: removed {sorted(peer)}")
        for link in PEER_LINKS:
            if link in _links() and link not in self.links:
                subprocess.run(["ip", "link", "delete", link], capture_output=True)
                notes.append(f"link {link} deleted")
        return notes  # the engine's own bridge: EngineD.stop checks it is gone


def _drop_chains(table: str, chains: set[str]) -> None:
    """Delete every rule that jumps to one of ``chains``, then flush and delete them."""
    rules = subprocess.run(["iptables", "-t", table, "-S"], capture_output=True, text=True).stdout
    for line in rules.splitlines():
        parts = shlex.split(line)  # comments are quoted: "netavark firewall plugin rules"
        if parts[:1] == ["-A"] and "-j" in parts and parts[parts.index("-j") + 1] in chains:
            subprocess.run(["iptables", "-t", table, "-D", *parts[1:]], capture_output=True)
    for c in chains:
        subprocess.run(["iptables", "-t", table, "-F", c], capture_output=True)
    for c in chains:
        subprocess.run(["iptables", "-t", table, "-X", c], capture_output=True)


# --- machine description ---------------------------------------------------------------------


def _first_line(argv: list[str]) -> str:
    if shutil.which(argv[0]) is None and not Path(argv[0]).exists():
        return "not installed"
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"error: {e}"
    out = (p.stdout or p.stderr).strip().splitlines()
    return out[0].strip() if out else f"exit {p.returncode}"


def machine_info() -> dict[str, str]:
    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    os_name = "?"
    for line in Path("/etc/os-release").read_text().splitlines():
        if line.startswith("PRETTY_NAME="):
            os_name = line.split("=", 1)[1].strip('"')
    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "os": os_name,
        "kernel": platform.release(),
        "cpu": f"{cpu} x {os.cpu_count()}",
        "memory": f"{mem_kb // 1024} MiB",
        "python": platform.python_version(),
        "runc": _first_line(["runc", "--version"]),
        "crun": _first_line(["crun", "--version"]),
        "conmon": _first_line(["conmon", "--version"]),
        "podman": _first_line(["podman", "--version"]),
        "docker": _first_line(["/usr/sbin/dockerd", "--version"]),
        "containerd": _first_line(["containerd", "--version"]),
        "skopeo": _first_line(["skopeo", "--version"]),
        "registry": _first_line(["/usr/bin/docker-registry", "--version"]),
        "engine_commit": _first_line(["git", "-C", str(Path(__file__).parent), "rev-parse", "--short", "HEAD"]),
    }
