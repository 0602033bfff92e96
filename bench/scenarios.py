"""The six scenarios of issue 6, and the Docker API one of issue 14. Each returns a plain
dict for the JSON report: ``{"title", "baseline", "rows": [RowResult.summary()...]}`` (timed
tables, some with named ``ratios``) or figures."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import attrs

from bench.engines import Engine, EngineD
from bench.raw import RawRuntime
from bench.report import paired_ratio
from bench.timing import Action, Row, StepFailed, command, interleave, run_quiet
from engine.testing import procs

# A container that stops at once on SIGTERM (a plain `sleep` as pid 1 ignores it and every
# engine would wait out its stop timeout): the trap runs as soon as `wait` is interrupted.
STOPPABLE = ["sh", "-c", "trap 'exit 0' TERM; sleep 100000 & wait"]


@attrs.define
class Plan:
    rounds_latency: int = 20
    rounds_concurrent: int = 7
    rounds_lifecycle: int = 10
    rounds_pull: int = 5
    rounds_listing: int = 10
    warmup: int = 1
    concurrency: int = 20
    memory_counts: tuple[int, ...] = (10, 100)
    settle: float = 5.0
    bridge: bool = True


@attrs.define
class Bench:
    """Everything a scenario needs."""

    work: Path
    plan: Plan
    image: str  # busybox, in every engine already
    large: str  # the pull image's reference
    raw: list[RawRuntime]
    engine: EngineD
    peers: list[Engine]  # podman, docker: whichever are running
    log: Callable[[str], None] = print

    def engines(self) -> list[Engine]:
        return [self.engine, *self.peers]


def _table(b: Bench, title: str, rows: list[Row], rounds: int) -> dict[str, Any]:
    b.log(f"== {title} ({rounds} rounds, interleaved)")
    results = interleave(rows, rounds, b.plan.warmup, log=b.log)
    return {"title": title, "rounds": rounds, "warmup": b.plan.warmup,
            "baseline": rows[0].label, "rows": [r.summary() for r in results]}


def _runtimes_of(e: Engine) -> list[str]:
    # docker's default is runc, podman's and ours (here) crun: list the default first
    return ["runc", "crun"] if e.name == "docker" else ["crun", "runc"]


def _run_rm(e: Engine, image: str, runtime: str | None, network: str | None) -> list[str]:
    args = ["run", "--rm"]
    if network:
        args += ["--network", network]
    if runtime:
        args += ["--runtime", runtime]
    return e.argv(*args, image, "true")


# --- 1. one container ----------------------------------------------------------------------------


def latency(b: Bench) -> dict[str, Any]:
    rows = [Row(f"{r.name} run (prepared bundle)", r.run, group="raw",
                cmd=f"{r.name} run --bundle B ID") for r in b.raw]
    for e in b.engines():
        for rt in _runtimes_of(e):
            argv = _run_rm(e, b.image, rt, "none")
            rows.append(Row(f"{e.name} run --rm --network none ({rt})", command(argv, env=e.env),
                            group=e.name, cmd=" ".join(argv[-7:])))
    if b.plan.bridge:
        for e in b.engines():
            argv = _run_rm(e, b.image, None, None)
            rows.append(Row(f"{e.name} run --rm (default bridge)", command(argv, env=e.env),
                            group=e.name, cmd=" ".join(argv[-4:])))
    return _table(b, "one container running `true`, from nothing to exit", rows,
                  b.plan.rounds_latency)


# --- 1b. the same container through the Docker API (issue 14) ---------------------------------

DOCKER_API_RATIO = "engine via docker CLI / docker"


def docker_api(b: Bench) -> dict[str, Any]:
    """`docker run --rm --network none --runtime runc IMAGE true` with one docker CLI, against
    dockerd and against the engine's Docker API, interleaved; the engine's own CLI beside
    them. runc and no network on both sides: docker's default runtime, and dockerd's bridge
    here runs without iptables (the harness turns them off) while the engine's sets up CNI
    and its rules, so the default bridge would not compare like with like."""
    via_docker = b.engine.docker_cli()
    rows = []
    sides = [e for e in b.peers if e.name == "docker"] + [via_docker, b.engine]
    for e in sides:
        argv = _run_rm(e, b.image, "runc", "none")
        rows.append(Row(f"{e.name} run --rm --network none (runc)", command(argv, env=e.env),
                        group="engine" if e is via_docker else e.name, cmd=" ".join(argv[-7:])))
    table = _table(b, "one container through the Docker API: the same docker CLI against "
                      "dockerd and against engined --docker-host", rows, b.plan.rounds_latency)
    with_docker = sides[0].name == "docker"
    table["ratios"] = {DOCKER_API_RATIO: paired_ratio(table, rows[1].label, rows[0].label)
                       if with_docker else None}
    return table


# --- 2. N at once ------------------------------------------------------------------------------


def _all_at_once(argvs: Callable[[], list[list[str]]], env: dict[str, str] | None) -> Action:
    def act() -> None:
        started = [subprocess.Popen(a, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE, env=env) for a in argvs()]
        failed = []
        for p in started:
            _, err = p.communicate(timeout=300)
            if p.returncode != 0:
                failed.append(f"exit {p.returncode}: {err.decode(errors='replace').strip()[-300:]}")
        if failed:
            raise StepFailed(f"{len(failed)} of {len(started)} failed; last: {failed[-1]}")
    return act


def concurrent(b: Bench) -> dict[str, Any]:
    n = b.plan.concurrency
    def raw_argvs(r: RawRuntime) -> Callable[[], list[list[str]]]:
        return lambda: [r.argv() for _ in range(n)]  # a fresh container id each

    def same(argv: list[str]) -> Callable[[], list[list[str]]]:
        return lambda: [argv] * n

    rows = [Row(f"{r.name} run x{n}", _all_at_once(raw_argvs(r), None), group="raw",
                cmd=f"{r.name} run --bundle B ID (x{n})") for r in b.raw]
    for e in b.engines():
        for rt in _runtimes_of(e):
            argv = _run_rm(e, b.image, rt, "none")
            rows.append(Row(f"{e.name} --network none ({rt}) x{n}", _all_at_once(same(argv), e.env),
                            group=e.name, cmd=" ".join(argv[-7:]) + f" (x{n})"))
    return _table(b, f"{n} containers running `true` started at once, until all have exited",
                  rows, b.plan.rounds_concurrent)


# --- 3. detached start and stop ----------------------------------------------------------------


def _rm_quiet(e: Engine, name: str) -> None:
    subprocess.run(e.argv("rm", "-f", name), capture_output=True, env=e.env, timeout=120)


def lifecycle(b: Bench) -> list[dict[str, Any]]:
    start_rows, stop_rows = [], []
    for e in b.engines():
        name = f"bench-life-{e.name}"
        run_d = e.argv("run", "-d", "--network", "none", "--name", name, b.image, *STOPPABLE)

        def fresh(e: Engine = e, name: str = name) -> None:
            _rm_quiet(e, name)

        def running(e: Engine = e, name: str = name, run_d: list[str] = run_d) -> None:
            _rm_quiet(e, name)
            run_quiet(run_d, env=e.env, timeout=120)

        start_rows.append(Row(f"{e.name} run -d", command(run_d, env=e.env), prep=fresh,
                              group=e.name, cmd=f"{e.name} run -d --network none --name N IMAGE sh -c '...'"))
        stop_rows.append(Row(f"{e.name} stop", command(e.argv("stop", name), env=e.env),
                             prep=running, group=e.name, cmd=f"{e.name} stop N"))
    out = [_table(b, "detached start: `run -d` until the CLI returns", start_rows,
                  b.plan.rounds_lifecycle),
           _table(b, "`stop` of a running container (exits on SIGTERM)", stop_rows,
                  b.plan.rounds_lifecycle)]
    for e in b.engines():
        _rm_quiet(e, f"bench-life-{e.name}")
    return out


# --- 4. pull ---------------------------------------------------------------------------------


def _sync() -> None:
    # no run pays for the previous run's writeback
    subprocess.run(["sync"], check=False)


def pull(b: Bench, blob_urls: list[str], image_info: dict[str, Any]) -> dict[str, Any]:
    w = b.work / "pull"
    w.mkdir(exist_ok=True)
    curl = ["curl", "-fsS"]
    for u in blob_urls:
        curl += ["-o", "/dev/null", u]
    skopeo_dir = w / "skopeo"

    def skopeo_prep() -> None:
        shutil.rmtree(skopeo_dir, ignore_errors=True)
        _sync()

    rows = [
        Row("curl of the blobs -> /dev/null (floor)", command(curl), prep=_sync, group="raw",
            cmd="curl -o /dev/null BLOB_URL..."),
        Row("skopeo copy -> oci: (no unpack)",
            command(["skopeo", "copy", "-q", "--src-tls-verify=false", f"docker://{b.large}",
                     f"oci:{skopeo_dir}:latest"]), prep=skopeo_prep, group="raw",
            cmd="skopeo copy docker://REF oci:DIR"),
    ]
    for e in b.engines():
        def absent(e: Engine = e) -> None:
            # rmi frees the blobs and layers only this image used (all of them, in each
            # engine), so every pull starts from nothing; busybox must stay for later scenarios
            subprocess.run(e.argv("rmi", "-f", b.large), capture_output=True, env=e.env, timeout=120)
            _sync()

        rows.append(Row(f"{e.name} pull", command(e.argv("pull", "-q", b.large), env=e.env),
                        prep=absent, group=e.name, cmd=f"{e.name} pull -q REF"))
    table = _table(b, f"pull of a {image_info['layers']}-layer image "
                      f"({image_info['gzip_bytes'] / 1e6:.0f} MB gzip, "
                      f"{image_info['tar_bytes'] / 1e6:.0f} MB tar) from a local registry",
                   rows, b.plan.rounds_pull)
    table["image"] = image_info
    shutil.rmtree(w, ignore_errors=True)
    return table


# --- 5 and 6. memory, and listing with many containers -----------------------------------------------


def _start_sleepers(e: Engine, image: str, names: list[str]) -> None:
    def one(name: str) -> None:
        run_quiet(e.argv("run", "-d", "--network", "none", "--name", name, image, *STOPPABLE),
                  env=e.env, timeout=300)

    with ThreadPoolExecutor(8) as pool:  # 100 one by one would take minutes on docker
        list(pool.map(one, names))


def _median(xs: list[int]) -> float:
    s = sorted(xs)
    if not s:
        return 0.0
    mid = len(s) // 2
    return float(s[mid]) if len(s) % 2 else (s[mid - 1] + s[mid]) / 2


def _daemon_kb(e: Engine) -> dict[str, int]:
    pids = e.daemon_pids()
    return {"rss_kb": sum(procs.rss_kb(p) for p in pids), "pss_kb": sum(procs.pss_kb(p) for p in pids)}


def memory_and_listing(b: Bench) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Per engine: daemon memory idle (freshly restarted) and with N running containers, the
    monitors' memory; then, with the most containers running, `ps -a` / `inspect` timed."""
    mem: dict[str, Any] = {}
    engines = []
    for e in b.engines():
        try:
            e.remove_all()
            e.stop()
            e.start()  # idle means freshly started: earlier scenarios' garbage does not count
            engines.append(e)
        except Exception as err:  # noqa: BLE001 - one broken engine must not stop the others
            mem[e.name] = {"error": f"restart: {err}"[-500:]}
    time.sleep(b.plan.settle)
    for e in engines:
        mem[e.name] = {"idle": _daemon_kb(e), "running": {}}
    started: dict[str, list[str]] = {e.name: [] for e in engines}
    for n in b.plan.memory_counts:
        for e in engines:
            b.log(f"== memory: {e.name} with {n} running containers")
            more = [f"bench-mem-{i}" for i in range(len(started[e.name]), n)]
            if "failed" in mem[e.name]:
                continue
            try:
                _start_sleepers(e, b.image, more)
            except StepFailed as err:
                mem[e.name]["running"][str(n)] = {"error": str(err)[-500:]}
                mem[e.name]["failed"] = True  # larger counts would fail the same way
                continue
            started[e.name] += more
        time.sleep(min(b.plan.settle, 3.0))
        for e in engines:
            if "failed" in mem[e.name]:
                continue
            mem[e.name]["running"][str(n)] = _memory_with(e, started[e.name])
    listing = _listing(b, engines, started) if b.plan.rounds_listing else None
    for e in engines:
        e.remove_all()
    return mem, listing


def _memory_with(e: Engine, names: list[str]) -> dict[str, Any]:
    monitors = []
    kinds = set()
    for name in names:
        try:
            m = e.monitor_pid(name)
        except Exception as err:  # noqa: BLE001 - reported in the figures, not fatal
            return {"error": f"inspect {name}: {err}"[-500:]}
        kinds.add(procs.comm(m))
        monitors.append((procs.rss_kb(m), procs.pss_kb(m)))
    daemon = _daemon_kb(e)
    return {
        "containers": len(names), "daemon": daemon, "monitor": sorted(kinds),
        "monitor_rss_kb_median": _median([r for r, _ in monitors]),
        "monitor_pss_kb_median": _median([p for _, p in monitors]),
    }


def _listing(b: Bench, engines: list[Engine], started: dict[str, list[str]]) -> dict[str, Any] | None:
    rows = []
    for e in engines:
        names = started[e.name]
        if not names:
            continue
        rows.append(Row(f"{e.name} ps -a ({len(names)} containers)",
                        command(e.argv("ps", "-a"), env=e.env), group=e.name, cmd=f"{e.name} ps -a"))
        rows.append(Row(f"{e.name} inspect ({len(names)} containers)",
                        command(e.argv("inspect", names[len(names) // 2]), env=e.env),
                        group=e.name, cmd=f"{e.name} inspect NAME"))
    if not rows:
        return None
    return _table(b, "`ps -a` and `inspect` latency with many containers present", rows,
                  b.plan.rounds_listing)
