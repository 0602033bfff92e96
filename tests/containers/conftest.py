"""Fixtures for container tests: a real engined with the busybox image loaded, parametrized
over the runtimes. Containers, monitors and mounts are swept even when a test fails."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from engine.testing.daemon import Daemon, require_binary
from engine.testing.images import busybox_image, write_docker_archive

RUNTIMES = ["runc", "crun"]


@pytest.fixture(scope="session")
def busybox_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("images") / "busybox.tar"
    write_docker_archive(path, [busybox_image()])
    return path


def start_engine(busybox_archive: Path, runtime: str, **kwargs: Any) -> Daemon:
    require_binary(runtime)
    require_binary("conmon")
    # Networking has tests of its own (tests/network_e2e); here containers get none.
    d = Daemon(extra_args=["--default-runtime", runtime, "--default-network", "none"], **kwargs)
    d.start()
    d.call("image.load", path=str(busybox_archive))
    return d


@pytest.fixture(params=RUNTIMES)
def engine(request: pytest.FixtureRequest, busybox_archive: Path) -> Iterator[Daemon]:
    d = start_engine(busybox_archive, request.param)
    d.runtime = request.param  # type: ignore[attr-defined]
    try:
        yield d
    finally:
        d.cleanup()


def collect_output(stream: Any) -> tuple[bytes, bytes]:
    """stdout and stderr of an attached container's stream, read to its end."""
    out, err = b"", b""
    for item in stream:
        if item["stream"] == "stderr":
            err += item["data"]
        else:
            out += item["data"]
    return out, err


def run_attached(d: Daemon, **params: Any) -> tuple[int, bytes, bytes]:
    """engctl run without -d: create, start attached, collect output and exit code."""
    with d.client() as c:
        cid = c.call("container.create", {"image": "busybox", **params})["Id"]
        stream = c.stream("container.start", id=cid, attach=True)
        out, err = collect_output(stream)
        return stream.result["ExitCode"], out, err
