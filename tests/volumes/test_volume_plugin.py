"""A third-party volume driver, pip-installed from its own package, is listed by `info` and
used by `run --mount`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.testing.daemon import Daemon

from .conftest import run

PLUGIN_SRC = Path(__file__).parent / "engine_volume_extra"


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
         "--target", str(target), str(PLUGIN_SRC)],
        check=True, timeout=300, capture_output=True,
    )
    assert list(target.glob("engine_volume_extra-*.dist-info"))
    return target


def test_installed_volume_driver_is_listed_and_used(plugin_site: Path, images_archive: Path) -> None:
    from engine.testing.daemon import require_binary

    require_binary("runc")
    require_binary("conmon")
    pythonpath = os.pathsep.join(filter(None, [str(plugin_site), os.environ.get("PYTHONPATH", "")]))
    d = Daemon(env={"PYTHONPATH": pythonpath}, extra_args=["--default-network", "none"])
    d.start()
    try:
        d.call("image.load", path=str(images_archive))
        info = d.call("system.info")
        drivers = {v["name"]: v for v in info["VolumeDrivers"]}
        assert drivers["extra"]["plugin"] == "volume-extra" and drivers["extra"]["available"]
        assert drivers["local"]["plugin"] == "local-volumes"
        code, out, err, _ = run(d, "busybox", mounts=[
            "type=volume,src=plugged,dst=/p,volume-driver=extra,volume-opt=speed=fast"],
            cmd=["sh", "-c", "echo through the plugin > /p/file; cat /p/file"])
        assert (code, out) == (0, b"through the plugin\n"), err
        assert (d.run_root / "extra-volumes" / "plugged" / "file").read_text() == "through the plugin\n"
        assert d.call("volume.inspect", name="plugged")["Driver"] == "extra"
        d.remove_all_containers()
        d.call("volume.remove", name="plugged")
        calls = (d.run_root / "volume-extra.log").read_text().splitlines()
        assert calls == ["create plugged speed=fast", "mount plugged", "unmount plugged", "remove plugged"]
    finally:
        d.cleanup()
