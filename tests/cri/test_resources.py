"""UpdateContainerResources (memory, CPU quota, CPU shares and cpusets reach the running
container's cgroup and its status; a bad value changes nothing) and PodSandboxStats (the pod's containers,
its CPU and memory, its network interface), through crictl."""

from __future__ import annotations

import json
from pathlib import Path

from engine.supervisor.stats import cgroup_paths
from tests.cri.conftest import CRI
from tests.cri.test_crictl import BUSYBOX, _write

CGROUP_FILES = {"cpu": ("cpu.shares", "cpu.cfs_quota_us"), "cpuset": ("cpuset.cpus", "cpuset.mems"),
                "memory": ("memory.limit_in_bytes",)}


def _cgroup(cri: CRI, ctr_id: str) -> dict[str, str]:
    """The container's cgroup v1 files, read on the host (this host's controllers are v1)."""
    pid = json.loads(cri.crictl("inspect", ctr_id).stdout)["info"]["pid"]
    paths = cgroup_paths(int(pid))
    return {name: (paths[controller] / name).read_text().strip()
            for controller, names in CGROUP_FILES.items() for name in names}


def _all_cpus() -> str:
    return Path("/sys/fs/cgroup/cpuset/cpuset.cpus").read_text().strip()


def test_update_resources_and_pod_stats(cri: CRI, tmp_path: Path) -> None:
    cri.crictl("pull", BUSYBOX)
    pod = _write(tmp_path / "pod.json", {
        "metadata": {"name": "res", "namespace": "default", "uid": "uid-res", "attempt": 0},
        "linux": {},
    })
    ctr = _write(tmp_path / "ctr.json", {
        "metadata": {"name": "busy"}, "image": {"image": BUSYBOX},
        "command": ["sh", "-c", "x=; while :; do x=$x.; sleep 0.05; done"], "linux": {},
    })
    pod_id = cri.crictl("runp", pod).stdout.strip()
    ctr_id = cri.crictl("create", pod_id, ctr, pod).stdout.strip()
    cri.crictl("start", ctr_id)

    cri.crictl("update", "--memory", str(64 * 1024 * 1024), "--cpu-quota", "50000",
               "--cpu-period", "100000", ctr_id)
    limit = cri.crictl("exec", "-s", ctr_id, "cat", "/sys/fs/cgroup/memory/memory.limit_in_bytes").stdout
    assert int(limit) == 64 * 1024 * 1024
    quota = cri.crictl("exec", "-s", ctr_id, "cat", "/sys/fs/cgroup/cpu/cpu.cfs_quota_us").stdout
    period = cri.crictl("exec", "-s", ctr_id, "cat", "/sys/fs/cgroup/cpu/cpu.cfs_period_us").stdout
    assert int(quota) / int(period) == 0.5

    # what kubelet sends on every update: CPU shares (the pod's weight), and cpusets
    cri.crictl("update", "--cpu-share", "512", "--cpuset-cpus", "0", "--cpuset-mems", "0", ctr_id)
    assert _cgroup(cri, ctr_id) == {"cpu.shares": "512", "cpuset.cpus": "0", "cpuset.mems": "0",
                                    "cpu.cfs_quota_us": "50000", "memory.limit_in_bytes": str(64 << 20)}
    resources = json.loads(cri.crictl("inspect", ctr_id).stdout)["status"]["resources"]["linux"]
    assert {k: resources[k] for k in ("cpuShares", "cpusetCpus", "cpusetMems", "cpuQuota", "cpuPeriod",
                                      "memoryLimitInBytes")} == {
        "cpuShares": "512", "cpusetCpus": "0", "cpusetMems": "0", "cpuQuota": "50000", "cpuPeriod": "100000",
        "memoryLimitInBytes": str(64 << 20)}
    cri.crictl("update", "--cpu-share", "2", "--cpuset-cpus", _all_cpus(), ctr_id)  # BestEffort's weight
    assert _cgroup(cri, ctr_id)["cpu.shares"] == "2"
    assert _cgroup(cri, ctr_id)["cpuset.cpus"] == _all_cpus()
    refused = cri.crictl("update", "--cpuset-cpus", "0-", ctr_id, check=False)
    assert refused.returncode != 0 and "--cpuset-cpus" in refused.stderr
    assert _cgroup(cri, ctr_id)["cpuset.cpus"] == _all_cpus()  # a refused update changes nothing

    stats = json.loads(cri.crictl("statsp", "-o", "json", "--id", pod_id).stdout)["stats"]
    assert len(stats) == 1
    pod_stats = stats[0]
    assert pod_stats["attributes"]["id"] == pod_id
    assert pod_stats["attributes"]["metadata"]["name"] == "res"
    linux = pod_stats["linux"]
    assert [c["attributes"]["id"] for c in linux["containers"]] == [ctr_id]
    assert int(linux["cpu"]["usageCoreNanoSeconds"]["value"]) > 0
    assert int(linux["memory"]["workingSetBytes"]["value"]) > 0
    assert linux["network"]["defaultInterface"]["name"] == "eth0"

    missing = cri.crictl("statsp", "--id", "feedface0000", "-o", "json", check=False)
    assert missing.returncode == 0 and json.loads(missing.stdout).get("stats", []) == []
    cri.crictl("stopp", pod_id)
    cri.crictl("rmp", pod_id)
