"""A daemon that stops leaves no mount of its namespace directory behind once no container
needs it, and keeps it while a running container's namespace lives in it (live-restore)."""

from __future__ import annotations

from pathlib import Path

from engine.testing.daemon import Daemon

from .e2e_net_helpers import run_d


def mounted(path: Path) -> bool:
    return any(line.split()[4] == str(path) for line in Path("/proc/self/mountinfo").read_text().splitlines())


def test_stop_releases_the_namespace_directory_only_when_empty(runc_engine: Daemon) -> None:
    d = runc_engine
    netns_dir = d.run_root / "netns"
    cid = run_d(d, image="busybox", cmd=["sleep", "300"])
    assert mounted(netns_dir)
    d.stop()
    assert mounted(netns_dir), "a running container's namespace still lives there"
    d.start()
    d.call("container.remove", id=cid, force=True)
    d.stop()
    assert not mounted(netns_dir)
    d.start()  # the fixture's teardown talks to it
