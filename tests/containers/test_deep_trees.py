"""A container (or an image) that nests directories thousands of levels deep is still
removed, and debris of that kind never stops the daemon from starting (issue 16, item 1).
Real engined, runc/crun, conmon and overlay mounts."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from engine.errors import NotFound
from engine.testing import images as ti
from engine.testing.daemon import Daemon

from .conftest import run_attached

# Built 1,000 levels per `mkdir -p` (a relative path under PATH_MAX), entered with `cd -P`
# so the shell never needs the full path: 5,000 levels, far past PATH_MAX.
DEEP_TREE = ("cd /tmp; p=a; i=1; while [ $i -lt 1000 ]; do p=$p/a; i=$((i+1)); done; "
             "n=0; while [ $n -lt 5 ]; do mkdir -p $p && cd -P $p || exit 9; n=$((n+1)); done; "
             "echo > leaf && echo built")


def overlay_dir(d: Daemon) -> Path:
    return d.root / "storage" / "overlay"


def depth_of(top: Path) -> int:
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    depth = 0
    try:
        while True:
            try:
                child = os.open("a", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            except FileNotFoundError:
                return depth
            os.close(fd)
            fd, depth = child, depth + 1
    finally:
        os.close(fd)


def plant_deep(top: Path, depth: int) -> None:
    top.mkdir(parents=True)
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(depth):
        os.mkdir("a", dir_fd=fd)
        child = os.open("a", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = child
    os.close(fd)


def test_a_container_with_a_5000_level_tree_is_removed(engine: Daemon) -> None:
    code, out, err = run_attached(engine, name="deep", user="65534:65534",
                                  cmd=["sh", "-c", DEEP_TREE])
    assert (code, out) == (0, b"built\n"), err
    cid = engine.call("container.inspect", id="deep")["Id"]
    upper = overlay_dir(engine) / "containers" / cid / "upper" / "tmp"
    assert depth_of(upper) == 5000

    engine.call("container.remove", id="deep")

    with pytest.raises(NotFound):
        engine.call("container.inspect", id="deep")
    assert os.listdir(overlay_dir(engine) / "containers") == []  # no .removing-* leaked
    assert not (engine.root / "containers" / cid).exists()
    engine.call("container.create", image="busybox", name="deep", cmd=["true"])  # name free


def test_the_daemon_starts_over_deep_debris_and_removes_it(engine: Daemon) -> None:
    engine.stop()
    debris = [overlay_dir(engine) / "containers" / ".removing-crashed" / "container",
              overlay_dir(engine) / "layers" / ".removing-crashed" / "layer",
              overlay_dir(engine) / "layers" / ".unpack-crashed" / "diff"]
    for path in debris:
        plant_deep(path, 5000)

    engine.start()

    assert engine.call("system.ping") == "pong"
    deadline = time.monotonic() + 30
    while any(p.parent.exists() for p in debris):
        assert time.monotonic() < deadline, [p for p in debris if p.parent.exists()]
        time.sleep(0.1)
    code, out, _ = run_attached(engine, cmd=["echo", "still works"])
    assert (code, out) == (0, b"still works\n")


def test_an_image_with_a_1500_level_path_is_removed(tmp_path: Path) -> None:
    layer = ti.LayerWriter()
    layer.dir("deep")
    layer.file("deep/" + "/".join(["d"] * 1500) + "/leaf", b"leaf\n")
    image = ti.TestImage(name="localhost/test/deep:latest", layers=[layer.bytes()])
    archive = tmp_path / "deep.tar"
    ti.write_docker_archive(archive, [image])
    d = Daemon(extra_args=["--default-network", "none"])
    try:
        d.start()
        d.call("image.load", path=str(archive))
        layers = overlay_dir(d) / "layers"
        assert len([n for n in os.listdir(layers) if not n.startswith(".")]) == 1

        d.call("image.remove", id="localhost/test/deep:latest")

        assert os.listdir(layers) == []
        assert d.call("image.list") == []
    finally:
        d.cleanup()
