"""testcontainers-python (PyPI ``testcontainers``, the throwaway-container library CI suites
use) against engine's Docker API, unchanged: a busybox httpd started with an exposed port and
a log-line wait, reached over HTTP from the test at testcontainers' own host and mapped port;
exec, env vars, bind mounts and copies in and out through its API; stop removes the
container; a testcontainers Network whose two containers reach each other by alias. Ryuk
(its reaper, a Docker Hub image) is disabled: there is no Docker Hub here, and every
container is removed by the test."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import Engine, EngineFactory

pytest.importorskip("testcontainers", reason="testcontainers is in the test extras (pip install -e .[test])")

from testcontainers.core.config import ConnectionMode, testcontainers_config  # noqa: E402
from testcontainers.core.container import DockerContainer  # noqa: E402
from testcontainers.core.network import Network  # noqa: E402
from testcontainers.core.wait_strategies import LogMessageWaitStrategy  # noqa: E402

HTTPD = "echo hello-from-tc > /www/index.html; echo httpd up; exec httpd -f -v -p 8080 -h /www"


@pytest.fixture
def engine(make_engine: EngineFactory, busybox_archive: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Engine]:
    """An engine on the default bridge with busybox loaded, and testcontainers pointed at it."""
    engine = make_engine(load_busybox=busybox_archive, network="bridge")
    monkeypatch.setenv("DOCKER_HOST", engine.docker_host)
    monkeypatch.setenv("TESTCONTAINERS_RYUK_DISABLED", "true")
    # testcontainers reads its config once, at import: make it read the variable again
    monkeypatch.setattr(testcontainers_config, "_ryuk_disabled", None)
    # This test may itself run in a container (/.dockerenv), where testcontainers would look for
    # the Docker host at this container's default gateway; the engine serves on this host.
    monkeypatch.setattr(testcontainers_config, "tc_host_override", "127.0.0.1")
    yield engine


def _get(url: str, timeout: float = 20) -> bytes:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.read()  # type: ignore[no-any-return]
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _containers(engine: Engine) -> list[dict[str, Any]]:
    return engine.daemon.call("container.list", all=True)  # type: ignore[no-any-return]


# docker_host: the Docker host's address and the mapped port (a CI runner next to its daemon);
# gateway_ip: the container's network gateway from inspect and the mapped port (docker-in-docker)
@pytest.mark.parametrize("mode", [ConnectionMode.docker_host, ConnectionMode.gateway_ip])
def test_container_port_logs_exec_env_volume_stop(engine: Engine, tmp_path: Path, mode: ConnectionMode,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    assert testcontainers_config.ryuk_disabled
    monkeypatch.setattr(testcontainers_config, "connection_mode_override", mode)
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "from-host.txt").write_text("host data\n")
    readonly = tmp_path / "readonly"  # its own directory: testcontainers keys mappings by host path
    readonly.mkdir()
    (readonly / "ro.txt").write_text("read me\n")
    container = (DockerContainer("busybox")
                 .with_command(["sh", "-c", f"mkdir -p /www; {HTTPD}"])
                 .with_exposed_ports(8080)
                 .with_env("GREETING", "hello tc")
                 .with_volume_mapping(str(shared), "/shared", "rw")
                 .with_volume_mapping(str(readonly), "/ro")  # testcontainers' default mode: ro
                 .with_copy_into_container(b"copied before the start\n", "/www/copied.html", 0o640)
                 .waiting_for(LogMessageWaitStrategy("httpd up").with_startup_timeout(30)))
    container.start()
    try:
        host = container.get_container_host_ip()
        port = container.get_exposed_port(8080)
        assert port != 8080
        if mode is ConnectionMode.gateway_ip:
            assert host == engine.daemon.net.gateway
        assert _get(f"http://{host}:{port}/") == b"hello-from-tc\n"
        assert _get(f"http://{host}:{port}/copied.html") == b"copied before the start\n"
        container.copy_into_container(b"copied while it runs\n", "/www/later.html")
        assert _get(f"http://{host}:{port}/later.html") == b"copied while it runs\n"
        container.copy_from_container("/www/index.html", tmp_path / "index.html")
        assert (tmp_path / "index.html").read_bytes() == b"hello-from-tc\n"
        assert container.exec(["stat", "-c", "%a", "/www/copied.html"]).output == b"640\n"

        result = container.exec(["sh", "-c", "echo $GREETING; cat /shared/from-host.txt; exit 3"])
        assert (result.exit_code, result.output) == (3, b"hello tc\nhost data\n")
        result = container.exec("sh -c 'echo written > /shared/from-ctr.txt'")
        assert result.exit_code == 0
        assert (shared / "from-ctr.txt").read_text() == "written\n"
        result = container.exec(["sh", "-c", "cat /ro/ro.txt; touch /ro/no"])
        # stdout and stderr are two pipes: their order in the stream is not the order of writes
        assert result.exit_code == 1 and b"read me\n" in result.output, result.output
        assert b"touch: /ro/no: Read-only file system\n" in result.output

        stdout, _ = container.get_logs()
        assert b"httpd up" in stdout
        container_id = container.get_container_id()
        assert [c["Id"] for c in _containers(engine)] == [container_id]
    finally:
        container.stop()
    assert _containers(engine) == []


def test_network_aliases(engine: Engine) -> None:
    with Network() as network:
        server = (DockerContainer("busybox")
                  .with_command(["sh", "-c", f"mkdir -p /www; {HTTPD}"])
                  .with_network(network)
                  .with_network_aliases("web")
                  .waiting_for(LogMessageWaitStrategy("httpd up").with_startup_timeout(30)))
        client = (DockerContainer("busybox")
                  .with_command(["sleep", "300"])
                  .with_network(network)
                  .with_network_aliases("client"))
        with server, client:
            deadline = time.monotonic() + 20
            while True:
                result = client.exec(["wget", "-q", "-O", "-", "http://web:8080/"])
                if result.exit_code == 0 or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            assert (result.exit_code, result.output) == (0, b"hello-from-tc\n")
            # and back, by the client's alias
            result = server.exec(["ping", "-c", "1", "-W", "3", "client"])
            assert result.exit_code == 0, result.output
        assert _containers(engine) == []
        assert network.name in {n["Name"] for n in engine.daemon.call("network.list")}
    assert network.name not in {n["Name"] for n in engine.daemon.call("network.list")}
