"""crun, driven through conmon. crun 1.8 refuses "hybrid" cgroup hosts (v1 hierarchies
plus a cgroup2 mount) while the cgroup2 mount holds any controller, so ``availability``
checks for that and says how to move the controllers to v1 mounts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.oci import seccomp_bpf
from engine.oci.cli_runtime import CLIRuntime
from engine.plugin import Availability
from engine.store.layout import Layout

CGROUP_ROOT = Path("/sys/fs/cgroup")


def cgroup2_mount(mountinfo: Path = Path("/proc/self/mountinfo")) -> Path | None:
    """Where cgroup2 is mounted, if anywhere."""
    try:
        lines = mountinfo.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        left, _, right = line.partition(" - ")
        if right.split(" ", 1)[0] == "cgroup2":
            return Path(left.split()[4])
    return None


def hybrid_controllers(root: Path = CGROUP_ROOT) -> list[str]:
    """Controllers on a cgroup2 mount that sits beside v1 hierarchies (empty = fine)."""
    mount = cgroup2_mount()
    if mount is None or mount == root:
        return []  # pure v1, or pure v2: crun handles both
    try:
        return (mount / "cgroup.controllers").read_text().split()
    except OSError:
        return []


def hybrid_fix(controllers: list[str], root: Path = CGROUP_ROOT) -> str:
    return " && ".join(
        f"mkdir -p {root}/{c} && mount -t cgroup -o {c} cgroup {root}/{c}" for c in controllers
    )


class CrunRuntime(CLIRuntime):
    """``crun`` with its state under ``state_root`` (``--root``) and cgroupfs cgroups."""

    # crun hands the process our pipes and returns when it exits; its detached exec would
    # leave two zombie crun processes in the container's pid namespace per exec.
    exec_through_reaper = False

    def __init__(
        self,
        state_root: Path,
        binary: str = "crun",
        *,
        name: str = "crun",
        extra_global_args: list[str] | None = None,
    ) -> None:
        super().__init__(name, binary, state_root, extra_global_args=extra_global_args)

    def adapt_spec(self, spec: dict[str, Any]) -> dict[str, Any]:
        """The seccomp profile compiled once per profile instead of at every start (blocking
        the first time: called in a worker thread)."""
        return seccomp_bpf.annotate(spec)

    @classmethod
    def from_layout(cls, layout: Layout) -> CrunRuntime:
        return cls(layout.runtime_state_dir("crun"))

    def availability(self) -> Availability:
        base = super().availability()
        if not base.ok:
            return base
        controllers = hybrid_controllers()
        if controllers:
            return Availability.no(
                "crun refuses hybrid cgroups while the cgroup2 mount holds controllers "
                f"({', '.join(controllers)}); move them to cgroup v1 mounts as root: "
                f"{hybrid_fix(controllers)}"
            )
        return Availability.yes()
