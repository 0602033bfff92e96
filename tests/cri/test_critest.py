"""A bounded critest run against engined's CRI, compared spec by spec with containerd's
baseline (../shared/cri-tools/baselines): every spec of the chosen groups that containerd
passes must pass here. Every group is run but the benchmarks; the digest-pinned image spec
is skipped (impossible offline). critest runs in this process's mount namespace, the daemon's: its
mount-propagation specs mount on the host side."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from tests.cri.conftest import CRI, cri_tools_dir

FOCUS = ("Runtime info|PodSandbox|Image Manager|basic operations|Networking|"
         "Container runtime should support log|Security Context|Mount Propagation|Streaming")
SKIP = "public image with digest"


def _baseline() -> dict[str, str]:
    tools = cri_tools_dir()
    assert tools is not None
    rows = (tools / "baselines" / "containerd-1.6.20-full.tsv").read_text().splitlines()
    return {row.split("\t")[2]: row.split("\t")[0] for row in rows if row.count("\t") >= 2}


def test_critest_subset_matches_containerd(cri: CRI, tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    env = {**os.environ, "PATH": f"{cri.bin_dir}:{os.environ['PATH']}"}
    proc = subprocess.run(
        [str(cri.bin_dir / "critest"), "--runtime-endpoint", cri.endpoint, "--image-endpoint",
         cri.endpoint, "--ginkgo.no-color", f"--ginkgo.focus={FOCUS}", f"--ginkgo.skip={SKIP}",
         f"--ginkgo.json-report={report}"],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=900)
    specs = json.loads(report.read_text())[0]["SpecReports"]
    outcome = {" ".join([*s["ContainerHierarchyTexts"], s["LeafNodeText"]]): s["State"]
               for s in specs if s["LeafNodeType"] == "It"}
    ran = {name: state for name, state in outcome.items() if state in ("passed", "failed")}
    baseline = _baseline()
    assert len(ran) >= 50, f"critest ran too few specs: {len(ran)}\n{proc.stdout[-2000:]}"
    regressions = sorted(n for n, state in ran.items() if state != "passed" and baseline.get(n) == "passed")
    assert not regressions, "failed here, passed with containerd:\n" + "\n".join(regressions) + \
        f"\n--- critest ---\n{proc.stdout[-3000:]}"
