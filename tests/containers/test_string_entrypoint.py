"""An image config whose Entrypoint and Cmd are plain strings (docker reads each as a
one-element list) loads and runs (issue 16, item 10). Real engined, runc/crun, conmon."""

from __future__ import annotations

from pathlib import Path

from engine.testing import images as ti
from engine.testing.daemon import Daemon

from .conftest import run_attached


def test_string_entrypoint_and_cmd_are_one_element_lists(engine: Daemon, tmp_path: Path) -> None:
    image = ti.TestImage(name="localhost/test/strings:latest", layers=[ti.busybox_rootfs_layer()],
                         config_extra={"Entrypoint": "echo", "Cmd": "from-the-image"})
    archive = tmp_path / "strings.tar"
    ti.write_docker_archive(archive, [image])
    engine.call("image.load", path=str(archive))

    inspect = engine.call("image.inspect", id="localhost/test/strings:latest")
    assert inspect["Config"]["Entrypoint"] == ["echo"]
    assert inspect["Config"]["Cmd"] == ["from-the-image"]
    code, out, err = run_attached(engine, image="localhost/test/strings:latest")
    assert (code, out) == (0, b"from-the-image\n"), err
    code, out, _ = run_attached(engine, image="localhost/test/strings:latest", cmd=["other"])
    assert (code, out) == (0, b"other\n")
