"""The benchmark harness's smoke mode: benchmarks are not tests, but the harness must not rot.

Runs ``python -m bench.run --quick --no-peers`` for real (raw runc/crun, a real engined, a
local registry, skopeo) and checks what it produced and that it left nothing behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.testing.daemon import mounts_under, processes_mentioning, require_binary

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
    try:
        p = _run_quick(work, out)
        assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
        assert "skipped: podman and docker: --no-peers" in p.stdout  # the reason is printed

        res = json.loads((out / "results.json").read_text())
        scenarios = res["scenarios"]
        assert set(scenarios) == {"latency", "concurrent", "run_detached", "stop", "pull", "listing"}
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

        mem = res["memory"]["engine"]
        assert mem["idle"]["rss_kb"] > 1000
        assert mem["running"]["5"]["containers"] == 5
        assert mem["running"]["5"]["monitor"] == ["conmon"]
        targets = {t["target"]: t for t in res["targets"]}
        assert targets["daemon idle RSS (MiB)"]["value"] > 0
        assert targets["one container: engine (crun) / podman"]["met"] is None  # no podman row

        md = (out / "results.md").read_text()
        assert "## Targets (issue 6)" in md and "| engine ps -a (5 containers) |" in md
        for key in ("kernel", "runc", "crun", "date"):
            assert f"| {key} |" in md
    finally:
        # whatever happened, nothing of the run may be left: no mounts, no processes
        leftovers = mounts_under(work), processes_mentioning(str(work))
    assert leftovers == ([], []), leftovers
