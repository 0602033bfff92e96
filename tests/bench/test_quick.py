"""The benchmark harness's smoke mode: benchmarks are not tests, but the harness must not rot.

Runs ``python -m bench.run --quick --no-peers`` for real (raw runc/crun, a real engined, a
local registry, skopeo, the docker CLI against the engine's Docker API) and checks what it
produced and that it left nothing behind: no mounts, no processes, and not the engine's
bridge or isolation chains (its own test network slot, never the default engine0)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench.engines import DOCKER_CLI
from engine.testing.daemon import mounts_under, processes_mentioning, require, require_binary

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration


def _run_quick(work: Path, out: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bench.run", "--quick", "--no-peers", "--scratch", "tmpfs",
         "--workdir", str(work), "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=150,
    )


@pytest.mark.timeout(180)
def test_quick_mode_runs_every_scenario_and_cleans_up(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("the benchmark harness needs root")
    for name in ("runc", "crun", "conmon", "skopeo", "curl", "docker-registry"):
        require_binary(name)
    work, out = tmp_path / "w", tmp_path / "out"
    has_cli = Path(DOCKER_CLI).exists()
    try:
        p = _run_quick(work, out)
        assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
        assert "skipped: podman and docker: --no-peers" in p.stdout  # the reason is printed

        res = json.loads((out / "results.json").read_text())
        scenarios = res["scenarios"]
        expected = {"latency", "concurrent", "run_detached", "stop", "pull", "listing"}
        if has_cli:
            expected.add("docker_api")
        else:
            assert any(s.startswith("docker_api: ") for s in res["skipped"]), res["skipped"]
        assert set(scenarios) == expected
        for table in scenarios.values():
            assert table["rows"], table["title"]
            for row in table["rows"]:
                # every row, raw runtimes and engine alike, ran every round
                assert row["fails"] == 0, (row["label"], row["last_error"])
                assert len(row["times"]) == table["rounds"]
                assert 0 < row["min"] <= row["median"] <= row["max"] < 60
        labels = {r["label"] for r in scenarios["latency"]["rows"]}
        assert {"runc run (prepared bundle)", "crun run (prepared bundle)",
                "engine run --rm --network none (crun)",
                "engine run --rm --network none (runc)"} <= labels
        assert scenarios["latency"]["rows"][0]["ratio_median"] == pytest.approx(1.0)
        assert scenarios["pull"]["image"]["layers"] == 5
        if has_cli:
            # without dockerd: the docker CLI through the engine's Docker API, and engctl
            api = scenarios["docker_api"]
            assert [r["label"] for r in api["rows"]] == [
                "engine via docker CLI run --rm --network none (runc)",
                "engine run --rm --network none (runc)"]
            assert api["ratios"] == {"engine via docker CLI / docker": None}  # no dockerd row

        # the engine ran on a bridge of its own, gone with its isolation chains
        bridge = res["engine_network"]["bridge"]
        assert re.fullmatch(r"engt\d{3}", bridge), bridge
        assert not Path("/sys/class/net", bridge).exists()
        rules = subprocess.run(["iptables", "-w", "5", "-S"], capture_output=True, text=True,
                               check=True).stdout
        assert f"ENGINE-ISO-{bridge}-" not in rules

        mem = res["memory"]["engine"]
        assert mem["idle"]["rss_kb"] > 1000
        assert mem["running"]["5"]["containers"] == 5
        assert mem["running"]["5"]["monitor"] == ["conmon"]
        targets = {t["target"]: t for t in res["targets"]}
        assert targets["daemon idle RSS (MiB)"]["value"] > 0
        assert targets["one container: engine (crun) / podman"]["met"] is None  # no podman row

        md = (out / "results.md").read_text()
        assert "## Targets (issue 6)" in md and "| engine ps -a (5 containers) |" in md
        if has_cli:
            assert "## Docker API (issue 14)" in md
            assert "| engine via docker CLI run --rm --network none (runc) |" in md
        for key in ("kernel", "runc", "crun", "date"):
            assert f"| {key} |" in md
    finally:
        # whatever happened, nothing of the run may be left: no mounts, no processes
        leftovers = mounts_under(work), processes_mentioning(str(work))
    assert leftovers == ([], []), leftovers
    require(has_cli, f"{DOCKER_CLI} is missing: the docker_api scenario was skipped (apt-get install docker.io)")
