"""docker's host options through the docker CLI: the container sees them, inspect shows
them with docker's field names, and what the engine cannot do is refused with docker's words."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from engine.testing.daemon import Daemon
from tests.dockerapi.conftest import Engine, EngineFactory

MiB = 1024 * 1024


@pytest.fixture
def engine(make_engine: EngineFactory, busybox_archive: Path) -> Engine:
    return make_engine(load_busybox=busybox_archive)


def status_field(text: str, name: str) -> str:
    return next(line.split()[1] for line in text.splitlines() if line.startswith(name + ":"))


def containers(d: Daemon) -> set[str]:
    return {c["Id"] for c in d.call("container.list", all=True)}


def test_privileges_and_security_opts(engine: Engine, tmp_path: Path) -> None:
    out = engine.docker("run", "--rm", "--privileged", "busybox", "cat", "/proc/self/status").stdout
    own = status_field(Path("/proc/self/status").read_text(), "CapBnd")
    assert status_field(out, "CapEff") == own and status_field(out, "Seccomp") == "0"
    out = engine.docker("run", "--rm", "--security-opt", "no-new-privileges", "--security-opt",
                        "seccomp=unconfined", "busybox", "cat", "/proc/self/status").stdout
    assert status_field(out, "NoNewPrivs") == "1" and status_field(out, "Seccomp") == "0"
    profile = tmp_path / "profile.json"  # the docker CLI sends the file's content
    profile.write_text(json.dumps({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO"}]}))
    out = engine.docker("run", "--rm", "--security-opt", f"seccomp={profile}", "busybox", "sh", "-c",
                        "mkdir /tmp/x 2>&1; echo rc=$?").stdout
    assert "rc=1" in out and "Operation not permitted" in out
    engine.docker("create", "--name", "priv", "--privileged", "--security-opt", "no-new-privileges:true",
                  "busybox", "true")
    host = json.loads(engine.docker("inspect", "priv").stdout)[0]["HostConfig"]
    assert host["Privileged"] is True and host["SecurityOpt"] == ["no-new-privileges:true"]
    assert host["MaskedPaths"] == [] and host["ReadonlyPaths"] == []
    engine.docker("rm", "priv")
    before = containers(engine.daemon)
    apparmor = engine.docker("run", "--rm", "--security-opt", "apparmor=unconfined", "busybox", "true", check=False)
    assert apparmor.returncode == 125 and "apparmor is not supported by engine" in apparmor.stderr
    assert containers(engine.daemon) == before


def test_limits_sysctls_groups_and_namespaces(engine: Engine) -> None:
    script = ("cat /proc/sys/net/ipv4/ip_default_ttl; ulimit -n; ulimit -Hn; df -k /dev/shm | tail -1; "
              "cat /proc/self/oom_score_adj; id -G; readlink /proc/self/ns/pid; "
              "cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us /sys/fs/cgroup/memory/memory.memsw.limit_in_bytes")
    out = engine.docker("run", "--rm", "--sysctl", "net.ipv4.ip_default_ttl=42", "--ulimit", "nofile=1024:2048",
                        "--shm-size", "128m", "--oom-score-adj", "300", "--group-add", "daemon", "--group-add",
                        "4242", "--pid", "host", "-m", "64m", "--memory-swap", "96m", "--cpu-quota", "30000",
                        "busybox", "sh", "-c", script).stdout.split("\n")
    assert out[0] == "42" and out[1] == "1024" and out[2] == "2048"
    assert out[3].split()[1] == str(128 * 1024)
    assert out[4] == "300" and out[5].split() == ["0", "1", "4242"]
    assert out[6] == os.readlink("/proc/self/ns/pid")
    assert out[7] == "30000" and int(out[8]) == 96 * MiB
    engine.docker("create", "--name", "opts", "--sysctl", "net.ipv4.ip_default_ttl=42", "--ulimit", "nproc=50:60",
                  "--shm-size", "32m", "--oom-score-adj", "9", "--group-add", "daemon", "--ipc", "host", "--uts",
                  "host", "-m", "64m", "--memory-swap", "-1", "--cpu-period", "50000", "--device",
                  "/dev/null:/dev/mynull:rw", "busybox", "true")
    host = json.loads(engine.docker("inspect", "opts").stdout)[0]["HostConfig"]
    assert host["Sysctls"] == {"net.ipv4.ip_default_ttl": "42"}
    assert host["Ulimits"] == [{"Name": "nproc", "Soft": 50, "Hard": 60}]
    assert (host["ShmSize"], host["OomScoreAdj"], host["GroupAdd"]) == (32 * MiB, 9, ["daemon"])
    assert (host["IpcMode"], host["UTSMode"], host["PidMode"]) == ("host", "host", "")
    assert (host["MemorySwap"], host["CpuPeriod"], host["CpuQuota"]) == (-1, 50000, 0)
    assert host["Devices"] == [{"PathOnHost": "/dev/null", "PathInContainer": "/dev/mynull",
                                "CgroupPermissions": "rw"}]
    engine.docker("rm", "opts")
    before = containers(engine.daemon)
    for args, words in (
        (["--sysctl", "kernel.hostname=x"], "is not allowed"),
        (["--network", "host", "--sysctl", "net.ipv4.ip_default_ttl=42"], "host's network namespace"),
        (["--oom-score-adj", "-5"], "below the engine's own"),
        (["-m", "64m", "--memory-swap", "32m"], "Minimum memoryswap limit should be larger than memory limit"),
        (["--cpus", "1", "--cpu-period", "50000"], "Conflicting options: Nano CPUs and CPU Period"),
        (["--pid", "container:other"], "not supported by engine yet"),
        (["--device", "/dev/nosuchdevice"], "no such file or directory"),
    ):
        result = engine.docker("run", "--rm", *args, "busybox", "true", check=False)
        # 127 for the missing device: the docker CLI reads "no such file or directory" as a
        # missing command, with dockerd's same message too
        assert result.returncode in (125, 127) and words in result.stderr, (args, result.stderr)
    assert containers(engine.daemon) == before
