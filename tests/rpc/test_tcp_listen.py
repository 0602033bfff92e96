"""Plain (non-TLS) tcp:// listeners only on loopback, judged by the address actually bound,
not by how the host is spelled; a bad host is a clean start-up error (issue 16, item 3).
Real engined processes."""

from __future__ import annotations

import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from engine.client.aio import connect
from engine.testing.daemon import Daemon, require_binary

from .test_ws_origin import free_port


def start_failure(d: Daemon, prefix: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run engined expecting it to refuse to start; returns the finished process."""
    d.base.mkdir(parents=True, exist_ok=True)
    return subprocess.run([*(prefix or []), *d.args()], capture_output=True, text=True,
                          timeout=30)


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    made: list[Daemon] = []
    yield made
    for d in made:
        d.cleanup()


def new_daemon(daemons: list[Daemon], *hosts: str, extra: list[str] | None = None) -> Daemon:
    d = Daemon(extra_args=["--default-network", "none"])
    d.extra_args += [arg for h in [*hosts, f"unix://{d.socket}"] for arg in ("-H", h)]
    d.extra_args += extra or []
    daemons.append(d)
    return d


def ping(host: str, ssl_context: ssl.SSLContext | None = None) -> object:
    async def main() -> object:
        with trio.fail_after(20):
            async with connect(host, ssl_context=ssl_context) as client:
                return await client.call("system.ping")

    return trio.run(main)


def listening_on(port: int) -> list[str]:
    """Local addresses with a TCP listener on ``port`` (from ss)."""
    out = subprocess.run(["ss", "-Htln", f"sport = :{port}"], capture_output=True, text=True)
    return [line.split()[3] for line in out.stdout.splitlines() if line.strip()]


def test_ipv6_loopback_is_served_plain(daemons: list[Daemon]) -> None:
    port = free_port()
    new_daemon(daemons, f"tcp://[::1]:{port}").start()
    assert listening_on(port) == [f"[::1]:{port}"]
    assert ping(f"tcp://[::1]:{port}") == "pong"


def test_localhost_is_served_plain(daemons: list[Daemon]) -> None:
    port = free_port()
    new_daemon(daemons, f"tcp://localhost:{port}").start()
    assert all(a.startswith(("127.", "[::1]")) for a in listening_on(port))
    assert ping(f"tcp://127.0.0.1:{port}") == "pong"


@pytest.mark.parametrize("host", ["tcp://0.0.0.0:{port}", "tcp://[::]:{port}"])
def test_all_interfaces_without_tls_is_refused(daemons: list[Daemon], host: str) -> None:
    port = free_port()
    done = start_failure(new_daemon(daemons, host.format(port=port)))
    assert done.returncode == 1, done.stderr
    assert "not a loopback address" in done.stderr and "tlscert" in done.stderr
    assert "Traceback" not in done.stderr
    assert listening_on(port) == []


def test_a_name_that_resolves_to_all_interfaces_is_refused(
    daemons: list[Daemon], tmp_path: Path
) -> None:
    # `localhost-lan` looks like loopback by its spelling; it resolves to 0.0.0.0. The
    # daemon runs in its own mount namespace with an /etc/hosts saying so.
    require_binary("unshare")
    hosts = tmp_path / "hosts"
    hosts.write_text("0.0.0.0 localhost-lan\n127.0.0.1 localhost\n")
    port = free_port()
    d = new_daemon(daemons, f"tcp://localhost-lan:{port}")
    prefix = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
              'mount --bind "$0" /etc/hosts && exec "$@"', str(hosts)]
    done = start_failure(d, prefix)
    assert done.returncode == 1, done.stderr
    assert "0.0.0.0, which is not a loopback address" in done.stderr
    assert "Traceback" not in done.stderr
    assert listening_on(port) == []


def test_an_unresolvable_name_is_a_clean_error(daemons: list[Daemon]) -> None:
    port = free_port()
    done = start_failure(new_daemon(daemons, f"tcp://localhost.:{port}"))
    assert done.returncode == 1, done.stderr
    assert f"cannot listen on tcp://localhost.:{port}" in done.stderr
    assert "Traceback" not in done.stderr and "ExceptionGroup" not in done.stderr


def test_tls_listener_still_serves(daemons: list[Daemon], tmp_path: Path) -> None:
    require_binary("openssl")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    port = free_port()
    new_daemon(daemons, f"tcp://127.0.0.1:{port}",
               extra=["--tlscert", str(cert), "--tlskey", str(key)]).start()
    ctx = ssl.create_default_context(cafile=str(cert))
    assert ping(f"tcp://127.0.0.1:{port}", ctx) == "pong"
