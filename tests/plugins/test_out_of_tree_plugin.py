"""A third-party runtime plugin, installed from its own package, is listed and used."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.testing.daemon import Daemon, require_binary
from engine.testing.images import busybox_image, write_docker_archive

PLUGIN_SRC = Path(__file__).parent / "engine_runc_extra"


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
         "--target", str(target), str(PLUGIN_SRC)],
        check=True, timeout=300, capture_output=True,
    )
    assert list(target.glob("engine_runc_extra-*.dist-info"))
    return target


def daemon_with(site: Path, **env: str) -> Daemon:
    pythonpath = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH", "")]))
    return Daemon(env={"PYTHONPATH": pythonpath, **env}, extra_args=["--default-network", "none"])


def test_installed_plugin_is_listed_and_runs_containers(plugin_site: Path, tmp_path: Path) -> None:
    require_binary("runc")
    require_binary("conmon")
    archive = tmp_path / "busybox.tar"
    write_docker_archive(archive, [busybox_image()])
    d = daemon_with(plugin_site)
    d.start()
    try:
        info = d.call("system.info")
        extra = [r for r in info["Runtimes"] if r["name"] == "runc-extra"]
        assert extra and extra[0]["plugin"] == "runc-extra" and extra[0]["available"], info["Runtimes"]
        assert "runc-extra" in info["Plugins"]["loaded"]
        d.call("image.load", path=str(archive))
        with d.client() as c:
            cid = c.call("container.create", image="busybox", runtime="runc-extra",
                         cmd=["echo", "via the plugin"])["Id"]
            stream = c.stream("container.start", id=cid, attach=True)
            out = b"".join(i["data"] for i in stream)
        assert out == b"via the plugin\n" and stream.result["ExitCode"] == 0
        assert d.call("container.inspect", id=cid)["HostConfig"]["Runtime"] == "runc-extra"
        log = (d.run_root / "runc-extra.log").read_text()
        assert "level=debug" in log  # runc ran with the plugin's extra flags
    finally:
        d.cleanup()


def test_disabled_plugin_is_not_loaded(plugin_site: Path) -> None:
    d = daemon_with(plugin_site, ENGINE_DISABLED_PLUGINS="runc-extra")
    d.start()
    try:
        info = d.call("system.info")
        assert "runc-extra" not in {r["name"] for r in info["Runtimes"]}
        assert "runc-extra" in info["Plugins"]["disabled"]
    finally:
        d.cleanup()
