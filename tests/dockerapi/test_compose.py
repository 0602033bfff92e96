"""docker-compose (Debian's 1.29, on docker-py) against engine's Docker API: a two-service
project (busybox httpd serving a NAMED volume, and a client that fetches from it by service
name) on a user network with a published port; up, ps, logs, exec, the port from the host,
down -v leaving no container, network or volume of the project. Also system df."""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from engine.testing.daemon import require_binary

from .conftest import Engine, EngineFactory

COMPOSE_FILE = """\
version: "2.4"
services:
  web:
    image: busybox
    command: ["sh", "-c", "echo hello-from-web > /www/index.html && echo web up && exec httpd -f -v -p 8080 -h /www"]
    volumes: ["www:/www"]
    ports: ["127.0.0.1:{port}:8080"]
    networks: [appnet]
  client:
    image: busybox
    command: ["sh", "-c", "for i in $$(seq 1 100); do if wget -q -O - http://web:8080/; then exit 0; fi; sleep 0.2; done; exit 1"]
    depends_on: [web]
    networks: [appnet]
networks:
  appnet: {{}}
volumes:
  www: {{}}
"""


@pytest.fixture
def engine(make_engine: EngineFactory, busybox_archive: Path) -> Engine:
    return make_engine(load_busybox=busybox_archive)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


Compose = Callable[..., "subprocess.CompletedProcess[str]"]


def compose_runner(engine: Engine, project_dir: Path, project: str) -> Compose:
    """``run(*args, check=True)``: Debian's docker-compose on ``project_dir`` against the
    engine; a failure shows compose's output and the daemon's log."""
    compose = require_binary("docker-compose")
    env = {**engine.env(), "COMPOSE_PROJECT_NAME": project}

    def run(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([compose, "--ansi", "never", *args], cwd=project_dir, env=env, capture_output=True,
                                text=True, timeout=timeout)
        if check:
            assert result.returncode == 0, (f"docker-compose {' '.join(args)} failed ({result.returncode}):\n"
                                            f"{result.stdout}\n{result.stderr}\n{engine.daemon.log()[-4000:]}")
        return result

    return run


def test_compose_up_ps_logs_down(engine: Engine, tmp_path: Path) -> None:
    port = free_port()
    (tmp_path / "docker-compose.yml").write_text(COMPOSE_FILE.format(port=port))
    run = compose_runner(engine, tmp_path, "smoke")

    try:
        run("up", "-d")
        networks = {n["Name"]: n for n in engine.daemon.call("network.list")}
        assert "smoke_appnet" in networks
        volume = engine.daemon.call("volume.inspect", name="smoke_www")
        assert volume["Labels"]["com.docker.compose.project"] == "smoke"
        web = engine.daemon.call("container.inspect", id="smoke_web_1")
        assert [(m["Type"], m["Name"], m["Destination"]) for m in web["Mounts"]] == [
            ("volume", "smoke_www", "/www")]
        deadline = time.monotonic() + 30
        while True:
            client = engine.daemon.call("container.inspect", id="smoke_client_1")["State"]
            if client["Status"] == "exited":
                break
            assert time.monotonic() < deadline, client
            time.sleep(0.2)
        assert client["ExitCode"] == 0  # it reached web by its service name on the user network
        ps = run("ps").stdout
        assert "smoke_web_1" in ps and "Up" in ps and f"127.0.0.1:{port}->8080/tcp" in ps
        assert "smoke_client_1" in ps and "Exit 0" in ps
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as response:
            assert response.read() == b"hello-from-web\n"
        # the page lives in the named volume, on the host too
        assert (Path(volume["Mountpoint"]) / "index.html").read_text() == "hello-from-web\n"
        served = run("exec", "-T", "web", "sh", "-c", "cat /www/index.html; pidof httpd")
        assert served.stdout == "hello-from-web\n1\n"  # the service's own process is pid 1
        failed = run("exec", "-T", "web", "sh", "-c", "exit 7", check=False)
        assert failed.returncode == 7
        logs = run("logs", "--no-color").stdout
        assert "web_1" in logs and "web up" in logs
        assert "client_1" in logs and "hello-from-web" in logs
        df = json.loads(engine.docker("system", "df", "--format", "{{json .}}").stdout.splitlines()[0])
        assert df["Type"] == "Images" and df["TotalCount"] == "1" and df["Active"] == "1"
        verbose = engine.docker_py().df()
        assert {c["Names"][0] for c in verbose["Containers"]} == {"/smoke_web_1", "/smoke_client_1"}
        assert verbose["Images"][0]["Containers"] == 2 and verbose["LayersSize"] > 0
        assert [(v["Name"], v["UsageData"]["RefCount"]) for v in verbose["Volumes"]] == [("smoke_www", 1)]
        assert verbose["Volumes"][0]["UsageData"]["Size"] > 0
    finally:
        down = run("down", "-v", "--timeout", "1", check=False)
    assert down.returncode == 0, down.stderr
    assert engine.daemon.call("container.list", all=True) == []
    assert "smoke_appnet" not in {n["Name"] for n in engine.daemon.call("network.list")}
    assert engine.daemon.call("volume.list")["Volumes"] == []
    assert engine.docker("volume", "ls", "-q").stdout.strip() == ""


HEALTH_FILE = """\
version: "2.4"
services:
  db:
    image: busybox
    command: ["sh", "-c", "sleep 1; touch /tmp/ready; exec sleep 300"]
    healthcheck:
      test: ["CMD", "test", "-f", "/tmp/ready"]
      interval: 300ms
      retries: 20
  app:
    image: busybox
    command: ["sh", "-c", "echo app started; exec sleep 300"]
    depends_on:
      db:
        condition: service_healthy
    environment: [GREETING=hi]
"""


def test_compose_waits_for_a_healthy_service_and_runs_one_offs(engine: Engine, tmp_path: Path) -> None:
    """depends_on with condition service_healthy (a ["CMD", ...] check, run without a shell),
    a one-off `run --rm` with the service's environment, restart, stop and down."""
    (tmp_path / "docker-compose.yml").write_text(HEALTH_FILE)
    run = compose_runner(engine, tmp_path, "health")

    try:
        run("up", "-d")
        db = engine.daemon.call("container.inspect", id="health_db_1")
        app = engine.daemon.call("container.inspect", id="health_app_1")
        assert db["State"]["Health"]["Status"] == "healthy"
        assert db["Config"]["Healthcheck"]["Test"] == ["CMD", "test", "-f", "/tmp/ready"]
        # compose started app only once db was healthy: after the check's first success
        passed = [entry for entry in db["State"]["Health"]["Log"] if entry["ExitCode"] == 0]
        assert passed and app["State"]["StartedAt"] >= passed[0]["End"][:26]
        one_off = run("run", "--rm", "-T", "app", "sh", "-c", "echo $GREETING from a one-off; exit 3", check=False)
        assert one_off.returncode == 3 and "hi from a one-off" in one_off.stdout
        run("restart", "-t", "1", "app")
        assert engine.daemon.call("container.inspect", id="health_app_1")["RestartCount"] == 0
        run("stop", "-t", "1")
        states = {c["Names"][0]: c["State"] for c in engine.docker_py().api.containers(all=True)}
        assert states == {"/health_db_1": "exited", "/health_app_1": "exited"}
    finally:
        down = run("down", "-v", "--timeout", "1", check=False)
    assert down.returncode == 0, down.stderr
    assert engine.daemon.call("container.list", all=True) == []
