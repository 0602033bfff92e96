"""stats, update and top against the cgroup files of running containers (this host:
cgroup v1, /sys/fs/cgroup/<controller>/engine/<id>)."""

from __future__ import annotations

import json
from pathlib import Path

from engine.supervisor import stats as st
from engine.testing.daemon import Daemon
from tests.verbs.conftest import engctl, exec_out, run_detached, wait_for, wait_for_processes

MiB = 1024 * 1024


def cgroup_dir(d: Daemon, cid: str, controller: str) -> Path:
    pid = d.call("container.inspect", id=cid)["State"]["Pid"]
    return st.cgroup_paths(pid)[controller]


def read_int(path: Path) -> int:
    return int(path.read_text().split()[0])


def test_stats_no_stream_agrees_with_the_cgroup_files(engine: Daemon) -> None:
    cid = run_detached(engine, "sleep 1000 & sleep 1000 & wait", memory=64 * MiB, pids_limit=20)
    # the script forks its sleeps after the run answered
    wait_for(lambda: read_int(cgroup_dir(engine, cid, "pids") / "pids.current") == 3, what="sh and its 2 sleeps")
    exec_out(engine, cid, "dd", "if=/dev/zero", "of=/tmp/fill", "bs=1M", "count=8")
    with engine.client() as c:
        items = list(c.stream("container.stats", ids=[cid], stream=False, interval=0.3))
    assert len(items) == 1 and len(items[0]) == 1
    item = items[0][0]
    memory = cgroup_dir(engine, cid, "memory")
    assert item["MemoryLimit"] == read_int(memory / "memory.limit_in_bytes") == 64 * MiB
    usage = read_int(memory / "memory.usage_in_bytes")
    inactive = dict(line.split() for line in (memory / "memory.stat").read_text().splitlines())
    expected = usage - int(inactive["total_inactive_file"])
    assert abs(item["MemoryUsage"] - expected) <= 2 * MiB  # both moved a little since
    assert item["Pids"] == read_int(cgroup_dir(engine, cid, "pids") / "pids.current") == 3
    cpu = read_int(cgroup_dir(engine, cid, "cpuacct") / "cpuacct.usage")
    assert 0 < item["CPUUsage"] <= cpu
    assert 0 <= item["CPUPercent"] <= 100 * item["OnlineCPUs"]
    assert abs(item["MemoryPercent"] - item["MemoryUsage"] / item["MemoryLimit"] * 100) < 0.01
    # engctl's json form, docker's fields
    out = engctl(engine, "stats", "--no-stream", "--format", "json", cid).stdout.decode()
    row = json.loads(out.splitlines()[0])
    assert row["ID"] == cid[:12] and row["PIDs"] == "3" and row["MemUsage"].endswith("/ 64MiB")
    table = engctl(engine, "stats", "--no-stream").stdout.decode().splitlines()
    assert table[0].split()[:3] == ["CONTAINER", "ID", "NAME"] and cid[:12] in table[1]


def test_stats_all_and_several_containers_streaming(engine: Daemon) -> None:
    a = run_detached(engine, "sleep 1000")
    b = run_detached(engine, "sleep 1000")
    stopped = engctl(engine, "create", "busybox", "true").stdout.decode().strip()
    with engine.client() as c:
        stream = c.stream("container.stats", all=True, interval=0.2)
        ticks = []
        for items in stream:
            ticks.append({i["Id"]: i for i in items})
            if len(ticks) == 3:
                stream.cancel()
                break
    for tick in ticks:
        assert {a, b, stopped} <= set(tick)
        assert tick[stopped]["Running"] is False and tick[stopped]["Pids"] == 0
        assert tick[a]["Pids"] == 1
    running = engine.call("container.list")
    assert {r["Id"] for r in running} >= {a, b}  # the daemon is fine after the cancel


def test_update_changes_the_running_cgroup_and_inspect(engine: Daemon) -> None:
    cid = run_detached(engine, "sleep 1000", memory=64 * MiB)
    memory = cgroup_dir(engine, cid, "memory")
    assert read_int(memory / "memory.limit_in_bytes") == 64 * MiB
    engctl(engine, "update", "--memory", "128m", "--cpus", "0.5", "--pids-limit", "33",
           "--restart", "on-failure:2", cid)
    assert read_int(memory / "memory.limit_in_bytes") == 128 * MiB
    assert read_int(cgroup_dir(engine, cid, "pids") / "pids.max") == 33
    cpu = cgroup_dir(engine, cid, "cpu")
    assert read_int(cpu / "cpu.cfs_quota_us") == 50_000 and read_int(cpu / "cpu.cfs_period_us") == 100_000
    host = engine.call("container.inspect", id=cid)["HostConfig"]
    assert (host["Memory"], host["NanoCpus"], host["PidsLimit"]) == (128 * MiB, 500_000_000, 33)
    assert host["RestartPolicy"] == {"Name": "on-failure", "MaximumRetryCount": 2}
    # kept for the next start
    engctl(engine, "restart", "-t", "0", cid)
    assert read_int(cgroup_dir(engine, cid, "memory") / "memory.limit_in_bytes") == 128 * MiB
    # refused values change nothing and say why
    bad = engctl(engine, "update", "--memory", "1m", cid, check=False)
    assert bad.returncode == 1 and b"6 MiB" in bad.stderr
    bad = engctl(engine, "update", "--restart", "sometimes", cid, check=False)
    assert bad.returncode == 1 and b"restart policy" in bad.stderr
    assert engine.call("container.inspect", id=cid)["HostConfig"]["Memory"] == 128 * MiB


def test_update_cpu_shares_and_cpusets(engine: Daemon) -> None:
    cid = run_detached(engine, "sleep 1000")
    cpu, cpuset = cgroup_dir(engine, cid, "cpu"), cgroup_dir(engine, cid, "cpuset")
    every_cpu = (cpuset.parent / "cpuset.cpus").read_text().strip()
    engctl(engine, "update", "--cpu-shares", "512", "--cpuset-cpus", "0", "--cpuset-mems", "0", cid)
    assert read_int(cpu / "cpu.shares") == 512
    assert [(cpuset / f).read_text().strip() for f in ("cpuset.cpus", "cpuset.mems")] == ["0", "0"]
    host = engine.call("container.inspect", id=cid)["HostConfig"]
    assert (host["CpuShares"], host["CpusetCpus"], host["CpusetMems"]) == (512, "0", "0")
    bad = engctl(engine, "update", "-c", "1", cid, check=False)
    assert bad.returncode == 1 and b"--cpu-shares must be between 2 and 262144" in bad.stderr
    bad = engctl(engine, "update", "--cpuset-cpus", "1-0", cid, check=False)
    assert bad.returncode == 1 and b"invalid --cpuset-cpus '1-0'" in bad.stderr
    # kept for the next start
    engctl(engine, "restart", "-t", "0", cid)
    cpu, cpuset = cgroup_dir(engine, cid, "cpu"), cgroup_dir(engine, cid, "cpuset")
    assert read_int(cpu / "cpu.shares") == 512 and (cpuset / "cpuset.cpus").read_text().strip() == "0"
    engctl(engine, "update", "-c", "1024", "--cpuset-cpus", every_cpu, cid)
    assert read_int(cpu / "cpu.shares") == 1024
    assert (cpuset / "cpuset.cpus").read_text().strip() == every_cpu


def test_run_with_cpu_shares_and_cpusets(engine: Daemon) -> None:
    out = engctl(engine, "run", "-d", "-c", "256", "--cpuset-cpus", "0", "--cpuset-mems", "0",
                 "busybox", "sleep", "1000").stdout
    cid = out.decode().strip()
    cpu, cpuset = cgroup_dir(engine, cid, "cpu"), cgroup_dir(engine, cid, "cpuset")
    assert read_int(cpu / "cpu.shares") == 256
    assert [(cpuset / f).read_text().strip() for f in ("cpuset.cpus", "cpuset.mems")] == ["0", "0"]
    host = engine.call("container.inspect", id=cid)["HostConfig"]
    assert (host["CpuShares"], host["CpusetCpus"], host["CpusetMems"]) == (256, "0", "0")
    bad = engctl(engine, "run", "-d", "--cpu-shares", "300000", "busybox", "true", check=False)
    assert bad.returncode == 125 and b"--cpu-shares must be between 2 and 262144" in bad.stderr
    bad = engctl(engine, "create", "--cpuset-cpus", "a", "busybox", "true", check=False)
    assert bad.returncode == 125 and b"invalid --cpuset-cpus 'a'" in bad.stderr


def test_top_lists_the_container_processes(engine: Daemon) -> None:
    cid = run_detached(engine, "sleep 1001 & sleep 1002 & wait")
    wait_for_processes(engine, cid, "sleep 1001", "sleep 1002")
    out = engctl(engine, "top", cid, "-eo", "pid,comm,args").stdout.decode().splitlines()
    assert out[0].split() == ["PID", "COMMAND", "COMMAND"]
    commands = [line.split(None, 2)[2] for line in out[1:]]
    assert sorted(commands) == ["sh -c sleep 1001 & sleep 1002 & wait", "sleep 1001", "sleep 1002"]
    default = engctl(engine, "top", cid).stdout.decode()
    assert "UID" in default.splitlines()[0] and "sleep 1002" in default
    bad = engctl(engine, "top", cid, "-o", "comm", check=False)
    assert bad.returncode == 125 and b"PID column" in bad.stderr
    engctl(engine, "stop", "-t", "0", cid)
    stopped = engctl(engine, "top", cid, check=False)
    assert stopped.returncode != 0 and b"not running" in stopped.stderr


def test_update_memory_swap(engine: Daemon) -> None:
    """engctl update --memory-swap: memory + swap in the running cgroup and in inspect,
    -1 unlimited; below the memory limit refused, nothing changed."""
    cid = run_detached(engine, "sleep 1000", memory=32 * MiB)
    memory = cgroup_dir(engine, cid, "memory")
    engctl(engine, "update", "-m", "48m", "--memory-swap", "200m", cid)
    assert (read_int(memory / "memory.limit_in_bytes"), read_int(memory / "memory.memsw.limit_in_bytes")) == (
        48 * MiB, 200 * MiB)
    engctl(engine, "update", "--memory-swap", "100m", cid)
    assert read_int(memory / "memory.memsw.limit_in_bytes") == 100 * MiB
    host = engine.call("container.inspect", id=cid)["HostConfig"]
    assert (host["Memory"], host["MemorySwap"]) == (48 * MiB, 100 * MiB)
    bad = engctl(engine, "update", "--memory-swap", "40m", cid, check=False)
    assert bad.returncode == 1 and b"memoryswap limit should be larger than memory limit" in bad.stderr
    assert engine.call("container.inspect", id=cid)["HostConfig"]["MemorySwap"] == 100 * MiB
    engctl(engine, "update", "--memory-swap", "-1", cid)
    assert engine.call("container.inspect", id=cid)["HostConfig"]["MemorySwap"] == -1
    assert read_int(memory / "memory.memsw.limit_in_bytes") > 2**60
