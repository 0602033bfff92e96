"""Where the Docker API is served: ``--docker-host`` (repeatable) and ``docker-hosts`` in
daemon.json; off unless asked for; tcp:// in plain only on loopback (the RPC's rule)."""

from __future__ import annotations

import json
import os
import subprocess

from engine.testing.daemon import Daemon, require_binary
from engine.testing.registry import free_port


def _docker(host: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DOCKER_HOST": host}
    return subprocess.run(["/usr/local/bin/docker", *args], capture_output=True, text=True, env=env, timeout=30)


def test_config_file_hosts_unix_and_loopback_tcp(tmp_path) -> None:
    require_binary("runc")
    port = free_port()
    daemon = Daemon()
    sock = daemon.base / "docker.sock"
    daemon.config = {"docker-hosts": [f"unix://{sock}", f"tcp://127.0.0.1:{port}"]}
    daemon.start()
    try:
        for host in (f"unix://{sock}", f"tcp://127.0.0.1:{port}"):
            result = _docker(host, "version", "--format", "{{json .Server}}")
            assert result.returncode == 0, result.stderr
            assert json.loads(result.stdout)["ApiVersion"] == "1.47"
        info = daemon.call("system.info")
        assert f"docker+tcp://127.0.0.1:{port}" in info["Hosts"]
        assert oct(sock.stat().st_mode & 0o777) == "0o660"
    finally:
        daemon.cleanup()
    assert not sock.exists()  # removed at shutdown


def test_off_unless_asked_and_plain_tcp_refused_off_loopback(tmp_path) -> None:
    require_binary("runc")
    daemon = Daemon()
    daemon.start()
    try:
        assert [h for h in daemon.call("system.info")["Hosts"] if h.startswith("docker+")] == []
    finally:
        daemon.cleanup()
    exposed = Daemon(extra_args=["--docker-host", f"tcp://0.0.0.0:{free_port()}"])
    try:
        try:
            exposed.start(timeout=10)
        except RuntimeError as e:
            assert "without TLS" in str(e) and "not a loopback address" in str(e)
        else:
            raise AssertionError("a plain tcp:// Docker API on 0.0.0.0 was accepted")
    finally:
        exposed.cleanup()
