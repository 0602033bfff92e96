"""Fixtures for the Docker API: a real engined serving ``--docker-host`` on its own unix
socket, a real docker-registry holding a busybox image built locally, and the real clients
(the docker CLI, docker-py). Every daemon and registry is stopped and swept at the end, even
when a test fails; each test gets its own daemon (own root, run-root, bridge and sockets)
and its own docker client config dir (no ~/.docker is read or written).
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from engine.testing import dockerd as dockerd_support
from engine.testing import images as test_images
from engine.testing.daemon import Daemon, in_ci, mounts_under, require, require_binary
from engine.testing.registry import Registry, push_layout, registry_server

BUSYBOX_REPO = "test/busybox"
DOCKER_CLIENTS = ["/usr/local/bin/docker"]


@pytest.fixture(autouse=True)
def _needs_root(request: pytest.FixtureRequest) -> None:
    if "engine" not in request.fixturenames:
        return
    if os.geteuid() != 0:
        if in_ci():
            pytest.fail("Docker API end-to-end tests run containers and need root")
        pytest.skip("needs root")
    for binary in ("runc", "conmon", "docker-registry", "skopeo"):
        require_binary(binary)


@pytest.fixture(scope="session")
def busybox_layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("layouts")
    test_images.write_oci_layout(base / "busybox", [test_images.busybox_image()])
    return base / "busybox"


@pytest.fixture(scope="session")
def busybox_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("archives") / "busybox.tar"
    test_images.write_docker_archive(path, [test_images.busybox_image()])
    return path


@pytest.fixture(scope="session")
def dockerd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dockerd_support.Dockerd]:
    """One private dockerd for the session, for side-by-side tests (Debian's docker.io, bridge
    none, firewall untouched: engine.testing.dockerd), with the test busybox loaded. Stopped
    and swept at the end; its processes and mounts must then be gone."""
    if os.geteuid() != 0:
        if in_ci():
            pytest.fail("dockerd needs root")
        pytest.skip("dockerd needs root")
    reason = dockerd_support.missing()
    require(reason is None, reason or "")
    archive = tmp_path_factory.mktemp("dockerd-archive") / "busybox.tar"
    test_images.write_docker_archive(archive, [test_images.busybox_image()])
    daemon = dockerd_support.Dockerd()
    try:
        daemon.start()
        loaded = daemon.cli("load", "-i", str(archive))
        assert loaded.returncode == 0, loaded.stderr
        yield daemon
    finally:
        pids = daemon.pids()
        daemon.cleanup()
        assert not any(dockerd_support.alive(p) for p in pids), f"dockerd/containerd left running: {pids}"
        assert mounts_under(daemon.base) == []


@pytest.fixture
def registry(tmp_path: Path, busybox_layout: Path) -> Iterator[Registry]:
    """A plain-HTTP registry on 127.0.0.1 holding test/busybox:latest."""
    with registry_server(tmp_path / "registry") as reg:
        push_layout(busybox_layout, "latest", reg, f"{BUSYBOX_REPO}:latest")
        yield reg


@attrs.define
class Engine:
    """An engined with the Docker API on ``docker_socket``, and its clients."""

    daemon: Daemon
    docker_socket: Path
    client_config: Path  # DOCKER_CONFIG for the CLI: its own, empty at first
    registry: Registry | None = None

    @property
    def docker_host(self) -> str:
        return f"unix://{self.docker_socket}"

    def env(self) -> dict[str, str]:
        return {**os.environ, "DOCKER_HOST": self.docker_host, "DOCKER_CONFIG": str(self.client_config),
                "DOCKER_CLI_HINTS": "false"}

    def docker(self, *args: str, timeout: float = 60, check: bool = True, binary: str = DOCKER_CLIENTS[0],
               input: str | None = None) -> subprocess.CompletedProcess[str]:
        """The docker CLI against this engine (stdout a pipe, never a TTY)."""
        result = subprocess.run([binary, *args], capture_output=True, text=True, env=self.env(),
                                timeout=timeout, input=input)
        if check:
            assert result.returncode == 0, (
                f"docker {' '.join(args)} failed ({result.returncode}):\n{result.stderr}\n{self.daemon.log()[-3000:]}")
        return result

    def docker_py(self) -> Any:
        import docker

        return docker.DockerClient(base_url=self.docker_host, version="auto", timeout=60)

    def image_ref(self, tag: str = "latest") -> str:
        assert self.registry is not None
        return f"{self.registry.host}/{BUSYBOX_REPO}:{tag}"


EngineFactory = Callable[..., Engine]


@pytest.fixture
def make_engine(tmp_path: Path) -> Iterator[EngineFactory]:
    started: list[Daemon] = []

    def start(*extra: str, registry: Registry | None = None, load_busybox: Path | None = None,
              network: str = "none", env: dict[str, str] | None = None) -> Engine:
        require_binary("runc")
        daemon = Daemon(env=env)
        socket = daemon.base / "docker.sock"
        args = ["--docker-host", f"unix://{socket}", "--default-network", network, *extra]
        if registry is not None:
            args += ["--insecure-registry", registry.host]
        daemon.extra_args = args
        started.append(daemon)
        daemon.start()
        if load_busybox is not None:
            daemon.call("image.load", path=str(load_busybox))
        config = tmp_path / f"docker-config-{len(started)}"
        config.mkdir()
        return Engine(daemon, socket, config, registry)

    try:
        yield start
    finally:
        for daemon in started:
            daemon.cleanup()


@pytest.fixture
def engine(make_engine: EngineFactory, registry: Registry) -> Engine:
    """An engine that may pull from the test registry; no image loaded."""
    return make_engine(registry=registry)


def docker_clients() -> list[str]:
    """The docker CLIs on this host: docker 28 (required) and Debian's 20.10 (API 1.41) when
    installed."""
    found = [b for b in DOCKER_CLIENTS if os.path.exists(b)]
    require(bool(found), "the docker CLI is not installed at /usr/local/bin/docker")
    debian = shutil.which("docker", path="/usr/bin")
    if debian and os.path.realpath(debian) not in map(os.path.realpath, found):
        found.append(debian)
    return found


# --- addresses for tests on networks of their own -------------------------------------------


def own_subnet(engine: Engine, k: int) -> ipaddress.IPv4Network:
    """The k-th /24 (1..15) of the daemon's own address pool: no other test's daemon uses it."""
    return list(ipaddress.IPv4Network(engine.daemon.net.pool).subnets(new_prefix=24))[k]


def at(subnet: ipaddress.IPv4Network, n: int) -> str:
    return str(subnet.network_address + n)
