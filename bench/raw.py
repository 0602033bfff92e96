"""The floor: raw ``runc run`` / ``crun run`` of a prepared bundle (busybox rootfs, the
runtime's own default config from ``runc spec``, args ``true``)."""

from __future__ import annotations

import itertools
import json
import shutil
import subprocess
from pathlib import Path

import attrs

from bench.images import unpack_busybox_rootfs
from bench.timing import run_quiet

_ids = itertools.count()


@attrs.define
class RawRuntime:
    name: str  # runc | crun
    bundle: Path
    state: Path

    def argv(self) -> list[str]:
        cid = f"bench-{self.name}-{next(_ids)}"
        return [self.name, "--root", str(self.state), "run", "--bundle", str(self.bundle), cid]

    def run(self) -> None:
        run_quiet(self.argv(), timeout=60)

    def cleanup(self) -> None:
        """Delete whatever a failed run left in the runtime's state dir."""
        if not self.state.exists():
            return
        for entry in self.state.iterdir():
            subprocess.run([self.name, "--root", str(self.state), "delete", "-f", entry.name],
                           capture_output=True, timeout=30)
        shutil.rmtree(self.state, ignore_errors=True)


def prepare_bundle(dest: Path) -> Path:
    unpack_busybox_rootfs(dest / "rootfs")
    run_quiet(["runc", "spec", "--bundle", str(dest)])
    config_path = dest / "config.json"
    config = json.loads(config_path.read_text())
    config["process"]["terminal"] = False
    config["process"]["args"] = ["true"]
    config_path.write_text(json.dumps(config, indent=1))
    return dest


def raw_runtimes(work: Path, run_dir: Path) -> list[RawRuntime]:
    """The floor: the runtimes alone, their state on ``run_dir`` (like /run/runc)."""
    bundle = prepare_bundle(work / "bundle")
    return [RawRuntime(n, bundle, run_dir / f"{n}-state") for n in ("runc", "crun")]
