"""engctl run with an image that is not there yet: docker's order (run, find the image
missing, pull, run again) through a real engined and a real local registry. Each attempt is
one container.run round trip; the daemon's NotFound says which image is missing."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.cli import main
from engine.testing import images as test_images
from engine.testing.daemon import Daemon, record_rpc_methods, require_binary
from engine.testing.registry import Registry, push_layout, registry_server


@pytest.fixture
def registry_with_busybox(tmp_path: Path) -> Iterator[Registry]:
    require_binary("skopeo")
    test_images.write_oci_layout(tmp_path / "layout", [test_images.busybox_image()])
    with registry_server(tmp_path) as registry:
        push_layout(tmp_path / "layout", "latest", registry, "test/busybox:latest")
        yield registry


@pytest.fixture
def empty_engine(registry_with_busybox: Registry) -> Iterator[Daemon]:
    runtime = "crun" if shutil.which("crun") else "runc"
    require_binary(runtime)
    require_binary("conmon")
    d = Daemon(extra_args=["--default-runtime", runtime, "--default-network", "none",
                           "--insecure-registry", registry_with_busybox.host])
    d.start()
    try:
        yield d
    finally:
        d.cleanup()


def test_run_pulls_a_missing_image_then_runs_it(
    empty_engine: Daemon, registry_with_busybox: Registry, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    calls = record_rpc_methods(monkeypatch, empty_engine.host)
    image = f"{registry_with_busybox.host}/test/busybox:latest"

    assert main.run(["run", "--rm", "--pull", "never", image, "true"]) == 125
    assert "no such image" in capsys.readouterr().err
    assert calls == ["container.run"]

    calls.clear()
    assert main.run(["run", "--rm", image, "echo", "pulled"]) == 0
    assert capsys.readouterr().out == "pulled\n"
    assert calls == ["container.run", "image.pull", "container.run"]

    calls.clear()  # now it is there: one call
    assert main.run(["run", "--rm", image, "true"]) == 0
    assert calls == ["container.run"]

    calls.clear()  # --pull always pulls first, even when the image is there
    assert main.run(["run", "--rm", "--pull", "always", image, "true"]) == 0
    assert calls == ["image.pull", "container.run"]

    calls.clear()  # detached: one call, the id printed
    assert main.run(["run", "-d", "--rm", image, "true"]) == 0
    assert len(capsys.readouterr().out.strip()) == 64
    assert calls == ["container.run"]


def test_create_pulls_only_a_missing_image(
    empty_engine: Daemon, registry_with_busybox: Registry, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    calls = record_rpc_methods(monkeypatch, empty_engine.host)
    image = f"{registry_with_busybox.host}/test/busybox:latest"

    # The create's NotFound names the missing image: engctl pulls it and creates again.
    assert main.run(["create", "--name", "c1", image, "true"]) == 0
    assert calls == ["container.create", "image.pull", "container.create"]
    cid = capsys.readouterr().out.strip()
    assert empty_engine.call("container.inspect", id="c1")["Id"] == cid

    calls.clear()
    assert main.run(["create", "--pull", "never", "--name", "c2", "no-such/image:1", "true"]) == 125
    assert "no such image" in capsys.readouterr().err
    assert calls == ["container.create"]
