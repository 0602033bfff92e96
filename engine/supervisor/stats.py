"""``stats`` and ``top``: what a container uses, read from its cgroups, and its processes.

One sampler serves a whole ``stats`` call: each tick reads every container's cgroup files
in a single worker-thread call (no thread or task per container) and the RPC handler
sends one item per tick holding every container. cgroup v1 (each controller its own
hierarchy, as on this host) and v2 (one unified hierarchy) are both read; the container's
cgroup is found through ``/proc/<pid>/cgroup`` of its init process.

docker's numbers: CPU % = (container CPU time delta / host CPU time delta) × online CPUs ×
100; memory usage excludes the inactive page cache (``total_inactive_file`` on v1,
``inactive_file`` on v2); an unlimited memory limit shows as the host's memory; network
I/O is the container's interfaces but ``lo``; block I/O sums reads and writes of every
device.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import attrs
import trio

from engine.errors import Conflict, InvalidArgument, RuntimeFailure

CGROUP_ROOT = Path("/sys/fs/cgroup")
UNLIMITED = 1 << 62  # larger than this: no limit (v1 writes PAGE_COUNTER_MAX in bytes)
NS_PER_SEC = 1_000_000_000


@attrs.frozen
class Target:
    id: str
    name: str
    pid: int  # 0: not running


@attrs.define
class Sample:
    cpu_usage: int = 0  # ns
    system_usage: int = 0  # ns of host CPU time
    online_cpus: int = 1
    memory_usage: int = 0
    memory_cache: int = 0  # the inactive file cache left out of the usage
    memory_limit: int = 0
    net_rx: int = 0
    net_tx: int = 0
    block_read: int = 0
    block_write: int = 0
    pids: int = 0


# --- reading the cgroups (blocking) ----------------------------------------------------------


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError, OSError):
        return ""


def _int(text: str) -> int:
    text = text.strip()
    if text in ("", "max"):
        return 0 if not text else UNLIMITED
    try:
        return int(text)
    except ValueError:
        return 0


def _keyed(text: str) -> dict[str, int]:
    """``key value`` lines (memory.stat, cpu.stat)."""
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        out[key] = _int(value)
    return out


def cgroup_paths(pid: int) -> dict[str, Path]:
    """Controller → directory of the process's cgroup; ``""`` is the v2 unified one."""
    paths: dict[str, Path] = {}
    for line in _read(Path(f"/proc/{pid}/cgroup")).splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        rel = path.lstrip("/")
        if not controllers:
            paths[""] = CGROUP_ROOT / rel if cgroup2_only() else CGROUP_ROOT / "unified" / rel
            continue
        for name in controllers.split(","):
            base = CGROUP_ROOT / name
            if not base.exists():
                base = CGROUP_ROOT / controllers
            paths[name] = base / rel
    return paths


def cgroup2_only() -> bool:
    return (CGROUP_ROOT / "cgroup.controllers").exists()


def _host_memory() -> int:
    for line in _read(Path("/proc/meminfo")).splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    return 0


def _system_usage() -> tuple[int, int]:
    """Host CPU time in ns (all CPUs) and the number of online CPUs (/proc/stat)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total, cpus = 0, 0
    for line in _read(Path("/proc/stat")).splitlines():
        if line.startswith("cpu "):
            total = sum(int(v) for v in line.split()[1:8]) * NS_PER_SEC // ticks
        elif line.startswith("cpu"):
            cpus += 1
    return total, max(cpus, 1)


def _net(pid: int) -> tuple[int, int]:
    rx = tx = 0
    for line in _read(Path(f"/proc/{pid}/net/dev")).splitlines()[2:]:
        name, _, data = line.partition(":")
        if name.strip() == "lo":
            continue
        fields = data.split()
        if len(fields) >= 9:
            rx += int(fields[0])
            tx += int(fields[8])
    return rx, tx


def _blkio_v1(path: Path) -> tuple[int, int]:
    read = write = 0
    for name in ("blkio.throttle.io_service_bytes_recursive", "blkio.io_service_bytes_recursive"):
        text = _read(path / name)
        for line in text.splitlines():
            fields = line.split()
            if len(fields) == 3 and fields[1] == "Read":
                read += int(fields[2])
            elif len(fields) == 3 and fields[1] == "Write":
                write += int(fields[2])
        if read or write:
            break
    return read, write


def _io_v2(path: Path) -> tuple[int, int]:
    read = write = 0
    for line in _read(path / "io.stat").splitlines():
        for field in line.split()[1:]:
            key, _, value = field.partition("=")
            if key == "rbytes":
                read += _int(value)
            elif key == "wbytes":
                write += _int(value)
    return read, write


def read_sample(pid: int, host_memory: int, system: tuple[int, int]) -> Sample:
    """One container's numbers now (zeros when it is not running)."""
    sample = Sample(system_usage=system[0], online_cpus=system[1])
    if pid <= 0:
        return sample
    paths = cgroup_paths(pid)
    if "memory" in paths:  # v1
        memory = paths["memory"]
        usage = _int(_read(memory / "memory.usage_in_bytes"))
        stat = _keyed(_read(memory / "memory.stat"))
        cache = stat.get("total_inactive_file", 0)
        sample.memory_cache = cache if cache < usage else 0
        sample.memory_usage = usage - sample.memory_cache
        sample.memory_limit = _int(_read(memory / "memory.limit_in_bytes"))
        sample.cpu_usage = _int(_read(paths.get("cpuacct", memory) / "cpuacct.usage"))
        sample.pids = _int(_read(paths.get("pids", memory) / "pids.current"))
        sample.block_read, sample.block_write = _blkio_v1(paths.get("blkio", memory))
    elif "" in paths:  # v2
        unified = paths[""]
        usage = _int(_read(unified / "memory.current"))
        stat = _keyed(_read(unified / "memory.stat"))
        cache = stat.get("inactive_file", 0)
        sample.memory_cache = cache if cache < usage else 0
        sample.memory_usage = usage - sample.memory_cache
        sample.memory_limit = _int(_read(unified / "memory.max"))
        sample.cpu_usage = _keyed(_read(unified / "cpu.stat")).get("usage_usec", 0) * 1000
        sample.pids = _int(_read(unified / "pids.current"))
        sample.block_read, sample.block_write = _io_v2(unified)
    if not sample.memory_limit or sample.memory_limit >= UNLIMITED or sample.memory_limit > host_memory:
        sample.memory_limit = host_memory
    sample.net_rx, sample.net_tx = _net(pid)
    return sample


def read_samples(targets: list[Target]) -> list[Sample]:
    """Every target's sample, in one pass (blocking: one worker-thread call per tick)."""
    host_memory = _host_memory()
    system = _system_usage()
    return [read_sample(t.pid, host_memory, system) for t in targets]


# --- the docker-shaped item -----------------------------------------------------------------------


def stats_item(target: Target, now: Sample, before: Sample | None) -> dict[str, Any]:
    cpu = 0.0
    if before is not None:
        cpu_delta = now.cpu_usage - before.cpu_usage
        system_delta = now.system_usage - before.system_usage
        if cpu_delta > 0 and system_delta > 0:
            cpu = cpu_delta / system_delta * now.online_cpus * 100.0
    memory_percent = now.memory_usage / now.memory_limit * 100.0 if now.memory_limit else 0.0
    return {
        "Id": target.id, "Name": target.name, "Running": target.pid > 0,
        "CPUPercent": round(cpu, 4), "CPUUsage": now.cpu_usage, "SystemUsage": now.system_usage,
        "OnlineCPUs": now.online_cpus,
        "MemoryUsage": now.memory_usage, "MemoryCache": now.memory_cache,
        "MemoryLimit": now.memory_limit, "MemoryPercent": round(memory_percent, 4),
        "NetRx": now.net_rx, "NetTx": now.net_tx,
        "BlockRead": now.block_read, "BlockWrite": now.block_write, "Pids": now.pids,
        # the previous sample's (0 without one): what CPUPercent came from
        "PreCPUUsage": before.cpu_usage if before else 0,
        "PreSystemUsage": before.system_usage if before else 0,
    }


class Sampler:
    """Successive samples of a changing set of containers (CPU % needs the previous one)."""

    def __init__(self) -> None:
        self._previous: dict[str, tuple[int, Sample]] = {}

    async def tick(self, targets: list[Target]) -> list[dict[str, Any]]:
        samples = await trio.to_thread.run_sync(read_samples, targets)
        items = []
        previous: dict[str, tuple[int, Sample]] = {}
        for target, sample in zip(targets, samples, strict=True):
            before = self._previous.get(target.id)
            same_run = before is not None and before[0] == target.pid
            items.append(stats_item(target, sample, before[1] if same_run and before else None))
            previous[target.id] = (target.pid, sample)
        self._previous = previous
        return items


# --- top ---------------------------------------------------------------------------------------------


def cgroup_pids(pid: int) -> set[int]:
    """Every process in the cgroup of ``pid`` (the container's, exec'd processes included)."""
    paths = cgroup_paths(pid)
    directory = paths.get("pids") or paths.get("memory") or paths.get("")
    if directory is None:
        return {pid}
    found = {int(p) for p in _read(directory / "cgroup.procs").split() if p.isdigit()}
    return found or {pid}


async def top(pid: int, ps_args: list[str]) -> dict[str, Any]:
    """docker top: ``ps`` (default ``-ef``) on the host, keeping the container's rows."""
    if pid <= 0:
        raise Conflict("the container is not running")
    args = ps_args or ["-ef"]
    for arg in args:
        if not arg.startswith("-") and any(ch in arg for ch in ";|&$`"):
            raise InvalidArgument(f"invalid ps option {arg!r}")
    pids = await trio.to_thread.run_sync(cgroup_pids, pid)
    with trio.fail_after(30):
        result = await trio.run_process(["ps", *args], capture_stdout=True, capture_stderr=True,
                                        check=False, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        raise InvalidArgument(f"ps {' '.join(args)} failed: {result.stderr.decode(errors='replace').strip()}")
    return parse_ps(result.stdout.decode(errors="replace"), pids)


def parse_ps(output: str, pids: set[int]) -> dict[str, Any]:
    lines = [line for line in output.splitlines() if line.strip()]
    if not lines:
        raise RuntimeFailure("ps printed nothing")
    titles = lines[0].split()
    if "PID" not in titles:
        raise InvalidArgument("the ps options must show a PID column (e.g. -o pid,comm)")
    pid_index = titles.index("PID")
    processes = []
    for line in lines[1:]:
        # the last column (the command) may hold spaces
        fields = line.split(None, len(titles) - 1)
        if len(fields) <= pid_index:
            continue
        try:
            if int(fields[pid_index]) not in pids:
                continue
        except ValueError:
            continue
        processes.append(fields)
    return {"Titles": titles, "Processes": processes}
