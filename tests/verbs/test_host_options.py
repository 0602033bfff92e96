"""docker's host options through engctl (runc and crun): --privileged, --security-opt,
--sysctl, --ulimit, --shm-size, --oom-score-adj, --group-add, --pid/--ipc/--uts host,
--memory-swap, --cpu-quota/--cpu-period and --device, each seen from inside the container
(or in its cgroup), and docker's refusals."""

from __future__ import annotations

import json
import os
import socket
import stat
from pathlib import Path

from engine.supervisor import stats as st
from engine.testing.daemon import Daemon
from tests.verbs.conftest import engctl, run_detached

MiB = 1024 * 1024


def run_out(d: Daemon, *args: str, script: str) -> str:
    return engctl(d, "run", "--rm", *args, "busybox", "sh", "-c", script).stdout.decode()


def refused(d: Daemon, *args: str) -> str:
    """engctl run's error for ``args``: it must fail, with docker's usage code, and leave no container."""
    before = {c["Id"] for c in d.call("container.list", all=True)}
    proc = engctl(d, "run", "--rm", *args, "busybox", "true", check=False)
    assert proc.returncode == 125, (proc.returncode, proc.stderr.decode())
    assert {c["Id"] for c in d.call("container.list", all=True)} == before
    return proc.stderr.decode()


def status_field(text: str, name: str) -> str:
    return next(line.split()[1] for line in text.splitlines() if line.startswith(name + ":"))


def own_status(name: str) -> str:
    return status_field(Path("/proc/self/status").read_text(), name)


def host_device() -> str:
    """A character device of the host's /dev that a container's own /dev lacks."""
    for name in ("kmsg", "loop-control", "mem", "fuse", "vcs"):
        path = f"/dev/{name}"
        if os.path.exists(path) and stat.S_ISCHR(os.stat(path).st_mode):
            return name
    raise AssertionError("no host device to look for")


def test_privileged_has_every_capability_the_hosts_devices_and_no_confinement(engine: Daemon) -> None:
    device = host_device()
    script = "cat /proc/self/status; ls /dev; grep ' /sys ' /proc/mounts; grep -c kcore /proc/self/mountinfo; true"
    out = run_out(engine, "--privileged", script=script)
    assert status_field(out, "CapEff") == own_status("CapBnd")  # all this host lets the engine grant
    assert status_field(out, "Seccomp") == "0"
    assert device in out.split()
    sys_line = next(line for line in out.splitlines() if " /sys " in line)
    assert " rw," in sys_line
    assert out.strip().split("\n")[-1] == "0"  # /proc/kcore is not masked
    plain = run_out(engine, script="cat /proc/self/status; ls /dev")
    assert status_field(plain, "CapEff") == "00000000a80425fb" and status_field(plain, "Seccomp") == "2"
    assert device not in plain.split()
    cid = engctl(engine, "create", "--privileged", "busybox", "true").stdout.decode().strip()
    assert engine.call("container.inspect", id=cid)["HostConfig"]["Privileged"] is True
    engctl(engine, "rm", cid)


def test_security_opt_no_new_privileges_and_seccomp(engine: Daemon, tmp_path: Path) -> None:
    out = run_out(engine, "--security-opt", "no-new-privileges", "--security-opt", "seccomp=unconfined",
                  script="cat /proc/self/status")
    assert status_field(out, "NoNewPrivs") == "1" and status_field(out, "Seccomp") == "0"
    out = run_out(engine, "--security-opt", "no-new-privileges:false", script="cat /proc/self/status")
    assert status_field(out, "NoNewPrivs") == "0" and status_field(out, "Seccomp") == "2"
    # a profile given by path: engctl sends its content, as docker's CLI does
    profile = tmp_path / "profile.json"
    profile.write_text(json.dumps({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO"}]}))
    out = run_out(engine, "--security-opt", f"seccomp={profile}",
                  script="mkdir /tmp/x 2>&1; echo rc=$?; grep Seccomp: /proc/self/status")
    assert "rc=1" in out and "Operation not permitted" in out
    assert "rc=0" in run_out(engine, script="mkdir /tmp/x; echo rc=$?")
    assert "apparmor is not supported" in refused(engine, "--security-opt", "apparmor=unconfined")
    assert "label is not supported" in refused(engine, "--security-opt", "label=disable")
    assert "invalid --security-opt" in refused(engine, "--security-opt", "bogus")
    assert "invalid --security-opt" in refused(engine, "--security-opt", "no-new-privileges=maybe")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert "seccomp profile" in refused(engine, "--security-opt", f"seccomp={bad}")


def test_sysctl_ulimit_shm_size_oom_score_adj_and_group_add(engine: Daemon) -> None:
    script = ("cat /proc/sys/net/ipv4/ip_default_ttl /proc/sys/kernel/shmmax; ulimit -n; ulimit -Hn; "
              "df -k /dev/shm | tail -1; cat /proc/self/oom_score_adj; id -G")
    out = run_out(engine, "--sysctl", "net.ipv4.ip_default_ttl=42", "--sysctl", "kernel.shmmax=1234567",
                  "--ulimit", "nofile=1024:2048", "--shm-size", "128m", "--oom-score-adj", "500",
                  "--group-add", "daemon", "--group-add", "4242", script=script).split("\n")
    assert out[0] == "42" and out[1] == "1234567"
    assert out[2] == "1024" and out[3] == "2048"
    assert out[4].split()[1] == str(128 * 1024)  # df -k: the tmpfs's size
    assert out[5] == "500"
    assert out[6].split() == ["0", "1", "4242"]
    plain = run_out(engine, script="cat /proc/sys/net/ipv4/ip_default_ttl; df -k /dev/shm | tail -1").split("\n")
    assert plain[0] == "64" and plain[1].split()[1] == str(64 * 1024)  # docker's 64m
    cid = engctl(engine, "create", "--sysctl", "net.ipv4.ip_forward=1", "--ulimit", "nproc=100",
                 "--shm-size", "1g", "--oom-score-adj", "7", "--group-add", "daemon", "busybox", "true"
                 ).stdout.decode().strip()
    host = engine.call("container.inspect", id=cid)["HostConfig"]
    assert host["Sysctls"] == {"net.ipv4.ip_forward": "1"}
    assert host["Ulimits"] == [{"Name": "nproc", "Soft": 100, "Hard": 100}]
    assert host["ShmSize"] == 1024**3 and host["OomScoreAdj"] == 7 and host["GroupAdd"] == ["daemon"]
    engctl(engine, "rm", cid)
    # docker's refusals
    assert "sysctl 'kernel.hostname=x' is not allowed" in refused(engine, "--sysctl", "kernel.hostname=x")
    assert "is not allowed" in refused(engine, "--sysctl", "vm.swappiness=1")
    assert "host's network namespace" in refused(engine, "--network", "host", "--sysctl", "net.ipv4.ip_forward=1")
    assert "host's IPC namespace" in refused(engine, "--ipc", "host", "--sysctl", "kernel.shmmax=1")
    assert "invalid ulimit type: bogus" in refused(engine, "--ulimit", "bogus=1")
    assert "soft limit must be less than or equal to hard limit: 2 > 1" in refused(engine, "--ulimit", "nofile=2:1")
    assert "invalid ulimit argument" in refused(engine, "--ulimit", "nofile")
    assert "range for oom score adj is [-1000, 1000]" in refused(engine, "--oom-score-adj", "1001")
    assert "below the engine's own" in refused(engine, "--oom-score-adj", "-5")
    assert "invalid size" in refused(engine, "--shm-size", "-1")
    missing = engctl(engine, "run", "--rm", "--group-add", "nosuchgroup", "busybox", "true", check=False)
    assert missing.returncode != 0 and "unable to find group 'nosuchgroup'" in missing.stderr.decode()


def test_host_pid_ipc_and_uts_namespaces(engine: Daemon) -> None:
    script = "for n in pid ipc uts; do readlink /proc/self/ns/$n; done; hostname"
    out = run_out(engine, "--pid", "host", "--ipc", "host", "--uts", "host", script=script).split()
    assert out[:3] == [os.readlink(f"/proc/self/ns/{ns}") for ns in ("pid", "ipc", "uts")]
    assert out[3] == socket.gethostname()
    own = run_out(engine, script=script).split()
    assert all(a != b for a, b in zip(own[:3], out[:3], strict=True))
    cid = engctl(engine, "create", "--pid", "host", "--uts", "host", "busybox", "true").stdout.decode().strip()
    host = engine.call("container.inspect", id=cid)["HostConfig"]
    assert (host["PidMode"], host["UTSMode"], host["IpcMode"]) == ("host", "host", "private")
    engctl(engine, "rm", cid)
    assert "Conflicting options: hostname and the UTS mode" in refused(engine, "--uts", "host", "-h", "box")
    assert "not supported by engine yet" in refused(engine, "--pid", "container:other")
    assert "invalid PID mode" in refused(engine, "--pid", "bogus")


def test_memory_swap_and_cfs_quota_reach_the_cgroup(engine: Daemon) -> None:
    cid = run_detached(engine, "sleep 1000", memory=64 * MiB, memory_swap=128 * MiB, cpu_quota=50_000,
                       cpu_period=200_000)
    pid = engine.call("container.inspect", id=cid)["State"]["Pid"]
    paths = st.cgroup_paths(pid)
    assert int((paths["memory"] / "memory.memsw.limit_in_bytes").read_text()) == 128 * MiB
    assert int((paths["cpu"] / "cpu.cfs_quota_us").read_text()) == 50_000
    assert int((paths["cpu"] / "cpu.cfs_period_us").read_text()) == 200_000
    host = engine.call("container.inspect", id=cid)["HostConfig"]
    assert (host["MemorySwap"], host["CpuQuota"], host["CpuPeriod"]) == (128 * MiB, 50_000, 200_000)
    engctl(engine, "rm", "-f", cid)
    # unlimited swap, through engctl's flags
    out = run_out(engine, "-m", "64m", "--memory-swap", "-1", "--cpu-quota", "20000",
                  script="cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us /sys/fs/cgroup/memory/memory.memsw.limit_in_bytes")
    quota, swap = out.split()
    assert quota == "20000" and int(swap) > 2**60
    assert "Minimum memoryswap limit should be larger than memory limit" in refused(
        engine, "-m", "64m", "--memory-swap", "32m")
    # -m alone: dockerd's default swap limit, twice the memory (this host accounts swap)
    cid = engctl(engine, "run", "-d", "-m", "64m", "busybox", "sleep", "1000").stdout.decode().strip()
    pid = engine.call("container.inspect", id=cid)["State"]["Pid"]
    memory_dir = st.cgroup_paths(pid)["memory"]
    assert int((memory_dir / "memory.memsw.limit_in_bytes").read_text()) == 128 * MiB
    host = engine.call("container.inspect", id=cid)["HostConfig"]
    assert (host["Memory"], host["MemorySwap"]) == (64 * MiB, 128 * MiB)
    # a memory limit above the swap limit is refused, as dockerd does; below it is taken
    update = engctl(engine, "update", "-m", "256m", cid, check=False)
    assert update.returncode != 0
    assert "Memory limit should be smaller than already set memoryswap limit" in update.stderr.decode()
    engctl(engine, "update", "-m", "100m", cid)
    assert int((memory_dir / "memory.limit_in_bytes").read_text()) == 100 * MiB
    host = engine.call("container.inspect", id=cid)["HostConfig"]
    assert (host["Memory"], host["MemorySwap"]) == (100 * MiB, 128 * MiB)
    engctl(engine, "rm", "-f", cid)
    assert "always set the Memory limit" in refused(engine, "--memory-swap", "128m")
    assert "Nano CPUs and CPU Quota cannot both be set" in refused(engine, "--cpus", "1", "--cpu-quota", "50000")
    assert "CPU cfs quota can not be less than 1ms" in refused(engine, "--cpu-quota", "500")
    assert "CPU cfs period can not be less than 1ms" in refused(engine, "--cpu-period", "2000000")


def test_memory_reservation_and_oom_kill_disable_reach_the_cgroup(engine: Daemon) -> None:
    out = run_out(engine, "-m", "96m", "--memory-reservation", "48m", "--oom-kill-disable",
                  script="cat /sys/fs/cgroup/memory/memory.soft_limit_in_bytes /sys/fs/cgroup/memory/memory.oom_control")
    assert out.splitlines()[0] == str(48 * MiB) and "oom_kill_disable 1" in out.splitlines()
    assert "Minimum memory reservation allowed is 6MB" in refused(engine, "--memory-reservation", "1m")
    assert "can not be less than memory reservation limit" in refused(
        engine, "-m", "32m", "--memory-reservation", "64m")


def test_device_is_created_and_allowed(engine: Daemon) -> None:
    out = run_out(engine, "--device", "/dev/null:/dev/mynull:rw",
                  script="echo hi > /dev/mynull && echo written; ls -l /dev/mynull; "
                         "cat /sys/fs/cgroup/devices/devices.list")
    assert "written" in out
    assert out.split("\n")[1].startswith("crw")
    assert "c 1:3 rw" in out
    cid = engctl(engine, "create", "--device", "/dev/zero", "busybox", "true").stdout.decode().strip()
    assert engine.call("container.inspect", id=cid)["HostConfig"]["Devices"] == [
        {"PathOnHost": "/dev/zero", "PathInContainer": "/dev/zero", "CgroupPermissions": "rwm"}]
    engctl(engine, "rm", cid)
    assert "no such file or directory" in refused(engine, "--device", "/dev/nosuchdevice")
    assert "invalid device mode" in refused(engine, "--device", "/dev/null:/dev/x:rwz")
    assert "not a device node" in refused(engine, "--device", "/etc/hostname")
