"""Run the benchmarks of issue 6 and write docs/benchmarks/results.{json,md,png}.

    python -m bench.run [--quick] [--no-peers] [--only latency,concurrent,...] [--out DIR]

Use scripts/bench.sh, which installs podman, docker.io and matplotlib first. Needs root.
Everything lives under --workdir (a fresh loop-mounted ext4 by default); on the way out,
whatever happens, daemons are stopped by pid, leftover container processes killed, mounts
removed, and ip_forward, the peers' iptables chains and bridges put back as they were.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import attrs

from bench import images, report, scenarios
from bench.engines import DOCKER_CLI, Docker, Engine, EngineD, Podman
from bench.host import NetSnapshot, Scratch, machine_info, prepare_cgroups
from bench.raw import RawRuntime, raw_runtimes
from bench.registry import Registry
from engine.testing.daemon import mounts_under
from engine.testing.procs import parent_of

ALL = ("latency", "docker_api", "concurrent", "lifecycle", "pull", "memory")
REPO = Path(__file__).resolve().parent.parent


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="smoke mode: few rounds, small images, 2/5 containers (~1 minute)")
    p.add_argument("--no-peers", action="store_true", help="only raw runtimes and the engine")
    p.add_argument("--only", default=",".join(ALL), help=f"comma-separated subset of {','.join(ALL)}")
    p.add_argument("--workdir", type=Path, default=Path("/var/tmp/engine-bench"))
    p.add_argument("--scratch", choices=("loop", "tmpfs", "none"), default=None,
                   help="what to mount at --workdir (default: loop ext4; tmpfs with --quick)")
    p.add_argument("--out", type=Path, default=None,
                   help="results directory (default docs/benchmarks; <workdir>-results with --quick)")
    p.add_argument("--rounds", type=int, default=None, help="override every scenario's rounds")
    p.add_argument("--no-bridge", action="store_true", help="skip the default-bridge rows")
    return p.parse_args(argv)


def make_plan(a: argparse.Namespace) -> scenarios.Plan:
    if a.quick:
        plan = scenarios.Plan(rounds_latency=3, rounds_concurrent=2, rounds_lifecycle=2,
                              rounds_pull=2, rounds_listing=3, warmup=1, concurrency=5,
                              memory_counts=(2, 5), settle=1.0, bridge=False)
    else:
        plan = scenarios.Plan()
    if a.rounds:
        plan = attrs.evolve(plan, rounds_latency=a.rounds, rounds_concurrent=a.rounds,
                            rounds_lifecycle=a.rounds, rounds_pull=a.rounds, rounds_listing=a.rounds)
    if a.no_bridge:
        plan = attrs.evolve(plan, bridge=False)
    return plan


def check_host() -> None:
    if os.geteuid() != 0:
        sys.exit("bench: run as root (containers, mounts, cgroups); see scripts/bench.sh")
    for tool in ("runc", "crun", "conmon", "skopeo", "curl", "mkfs.ext4"):
        if subprocess.run(["which", tool], capture_output=True).returncode != 0:
            sys.exit(f"bench: {tool} is missing: run scripts/setup.sh install first")


@attrs.define
class Session:
    """What was started, so that teardown undoes exactly that."""

    scratch: Scratch
    net: NetSnapshot
    registry: Registry | None = None
    engines: list[Engine] = attrs.field(factory=list)
    raw: list[RawRuntime] = attrs.field(factory=list)
    notes: list[str] = attrs.field(factory=list)

    def teardown(self) -> None:
        for e in reversed(self.engines):
            try:
                e.stop()
            except Exception as err:  # noqa: BLE001 - keep tearing down the rest
                self.notes.append(f"stopping {e.name}: {err}")
        for r in self.raw:
            r.cleanup()
        if self.registry:
            self.registry.stop()
        swept = sweep(self.scratch.path)
        if swept:
            self.notes.append(f"killed {swept} leftover process(es) under {self.scratch.path}")
        self.scratch.unmount()
        left = mounts_under(self.scratch.path)
        if left:
            self.notes.append(f"mounts still present: {left}")
        self.notes += self.net.restore()


def _ancestors() -> set[int]:
    pids, pid = set(), os.getpid()
    while pid > 1:
        pids.add(pid)
        try:
            pid = parent_of(pid)
        except OSError:
            break
    return pids


def sweep(base: Path) -> int:
    """Kill processes whose command line names ``base`` (conmon, shims, stray runtimes) —
    never this process or its parents, whose arguments may name it too."""
    keep, killed = _ancestors(), 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in keep:
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if str(base).encode() in cmdline:
            try:
                os.kill(int(entry), signal.SIGKILL)
                killed += 1
            except ProcessLookupError:
                pass
    return killed


def start_peers(a: argparse.Namespace, work: Path, registry: str, s: Session) -> tuple[list[Engine], list[str]]:
    skipped: list[str] = []
    if a.no_peers:
        return [], ["podman and docker: --no-peers"]
    peers: list[Engine] = []
    for cls, name in ((Podman, "podman"), (Docker, "docker")):
        why = cls.missing()
        if why:
            skipped.append(f"{name}: {why}")
            log(f"skipping {name}: {why}")
            continue
        e = cls(name=name, base=work / name, run_base=s.scratch.run_dir / name, registry=registry)
        s.engines.append(e)
        try:
            e.start()
        except Exception as err:  # noqa: BLE001 - a peer that does not start is skipped, with the reason
            skipped.append(f"{name}: did not start: {err}")
            log(f"skipping {name}: {err}")
            continue
        peers.append(e)
    return peers, skipped


def provide_image(e: Engine, ref: str, archive: Path) -> None:
    try:
        e.run("pull", "-q", ref, timeout=300)
    except Exception as err:  # noqa: BLE001 - a broken pull must not hide the run figures
        if not isinstance(e, EngineD):
            raise
        log(f"engine pull failed ({err}); loading the archive instead")
        e.run("load", "-i", str(archive), timeout=300)


def run(a: argparse.Namespace) -> dict[str, Any]:
    plan = make_plan(a)
    only = set(a.only.split(","))
    unknown = only - set(ALL)
    if unknown:
        sys.exit(f"bench: unknown scenario(s) {sorted(unknown)}; choose from {','.join(ALL)}")
    scratch_kind = a.scratch or ("tmpfs" if a.quick else "loop")
    s = Session(Scratch(a.workdir, scratch_kind, size="4G" if scratch_kind == "tmpfs" else "16G"),
                NetSnapshot.take())
    res: dict[str, Any] = {"quick": a.quick, "plan": attrs.asdict(plan), "scenarios": {},
                           "machine": machine_info(), "skipped": [], "notes": s.notes}
    res["plan"]["scratch"] = scratch_kind
    try:
        s.scratch.mount()
        work = a.workdir
        warn = prepare_cgroups()
        if warn:
            s.notes.append(warn)
        log(f"work dir {work} ({scratch_kind})")
        s.registry = Registry(work / "registry").start()
        reg = s.registry.addr
        bb_ref, large_ref = f"{reg}/{images.BUSYBOX_REPO}:latest", f"{reg}/{images.LARGE_REPO}:latest"
        spec = images.LargeSpec(data_layers=4, random_mib=4, text_files=20) if a.quick else images.LargeSpec()
        log("building test images")
        built = images.build_all(work / "images", spec, bb_ref)
        images.push(built.busybox_layout, bb_ref)
        images.push(built.large_layout, large_ref)
        s.raw = raw_runtimes(work / "raw", s.scratch.run_dir / "raw")
        if "docker_api" in only and not Path(DOCKER_CLI).exists():
            only.discard("docker_api")
            res["skipped"].append(f"docker_api: {DOCKER_CLI} is missing (apt-get install docker.io)")
        engine = EngineD(name="engine", base=work / "engine", run_base=s.scratch.run_dir / "engine",
                         registry=reg, docker_api="docker_api" in only)
        s.engines.append(engine)
        engine.start()
        assert engine.net is not None
        res["engine_network"] = {"bridge": engine.net.bridge, "bip": f"{engine.net.gateway}/24",
                                 "pool": engine.net.pool}
        log("engine: bridge {bridge}, bip {bip}, pool {pool}".format(**res["engine_network"]))
        peers, skipped = start_peers(a, work, reg, s)
        res["skipped"] += skipped
        for e in [engine, *peers]:
            provide_image(e, bb_ref, built.busybox_archive)
        b = scenarios.Bench(work, plan, bb_ref, large_ref, s.raw, engine, peers, log)
        sc = res["scenarios"]
        if "latency" in only:
            sc["latency"] = scenarios.latency(b)
        if "docker_api" in only:
            sc["docker_api"] = scenarios.docker_api(b)
        if "concurrent" in only:
            sc["concurrent"] = scenarios.concurrent(b)
        if "lifecycle" in only:
            sc["run_detached"], sc["stop"] = scenarios.lifecycle(b)
        if "pull" in only:
            sc["pull"] = scenarios.pull(b, images.blob_urls(reg, images.LARGE_REPO), built.large_info)
        if "memory" in only:
            # idle memory as the daemon serves by default: the Docker API's modules are
            # imported only with --docker-host, so the restart below comes up without it
            engine.docker_api = False
            res["memory"], sc["listing"] = scenarios.memory_and_listing(b)
    finally:
        log("tearing down")
        s.teardown()
    res["targets"] = report.targets(res)
    return res


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    check_host()
    # SIGTERM/SIGHUP unwind like Ctrl-C, so the teardown in run() always happens
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.default_int_handler)
    res = run(a)
    out = a.out or (Path(f"{a.workdir}-results") if a.quick else REPO / "docs" / "benchmarks")
    files = report.write_all(res, out)
    print(report.markdown(res))
    log("wrote " + ", ".join(str(f) for f in files))
    return 0


if __name__ == "__main__":
    sys.exit(main())
