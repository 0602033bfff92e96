"""A private dockerd (Debian's docker.io) for tests and the benchmarks: its own data-root,
exec-root, pidfile and socket under one base directory, and nothing of the host's changed.

dockerd must not rewrite this host's firewall (the project's network tests check it):
iptables, ip-forward and ip-masq are off. ``bridge="none"`` (the tests' choice) also keeps
it from creating docker0; the benchmarks leave the default bridge on.

``stop`` is safe to call at any time and always finishes the job: containers removed while
the daemon answers, dockerd stopped by pid (SIGTERM, then SIGKILL), the containerd it
started stopped by pid too, then every process still naming the base (containerd shims)
killed, every mount under the base unmounted and the base removed.

    with dockerd_server(registry="127.0.0.1:5000") as d:
        subprocess.run([DOCKER_CLI, "ps"], env=d.env())
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from engine.store.rmtree import remove_tree
from engine.testing.daemon import sweep_leftovers
from engine.testing.procs import alive, children, comm, stop_pid

DOCKERD = "/usr/sbin/dockerd"
DOCKER_CLI = "/usr/bin/docker"  # Debian's 20.10 CLI, from dockerd's package (a newer one may come first in PATH)
START_TIMEOUT = 60.0


def missing() -> str | None:
    """Why a private dockerd cannot run here, or None."""
    for path in (DOCKERD, DOCKER_CLI):
        if not Path(path).exists():
            return f"{path} is missing (apt-get install docker.io; scripts/setup.sh install does)"
    return None


def dockerd_config(base: Path, run_base: Path, host: str, *, registry: str = "",
                   bridge: str | None = None) -> dict[str, Any]:
    """daemon.json for a private dockerd whose every file lives under ``base``/``run_base``."""
    config: dict[str, Any] = {
        "data-root": str(base / "root"), "exec-root": str(run_base / "exec"),
        "pidfile": str(base / "dockerd.pid"), "hosts": [host],
        "storage-driver": "overlay2", "iptables": False, "ip-forward": False,
        "ip-masq": False, "runtimes": {"crun": {"path": shutil.which("crun") or "/usr/bin/crun"}},
        "insecure-registries": [registry] if registry else [],
    }
    if bridge is not None:
        config["bridge"] = bridge
    return config


def containerd_of(dockerd_pid: int) -> int | None:
    """The containerd dockerd started as its child (it stops it itself; we make sure)."""
    kids = [c for c in children(dockerd_pid) if comm(c) == "containerd"]
    return kids[0] if kids else None


# --- the daemon -------------------------------------------------------------------------------


class Dockerd:
    """One private dockerd. ``base`` is short (a unix socket path must fit in 108 bytes)."""

    def __init__(self, base: Path | None = None, *, registry: str = "",
                 bridge: str | None = "none") -> None:
        self.base = base or Path(tempfile.mkdtemp(prefix="dkd-"))
        self.run_base = self.base / "run"
        self.socket = self.base / "docker.sock"
        self.host = f"unix://{self.socket}"
        self.log_path = self.base / "dockerd.log"
        self.registry = registry
        self.bridge = bridge
        self.proc: subprocess.Popen[bytes] | None = None
        self.containerd: int | None = None

    def env(self, config_dir: Path | None = None) -> dict[str, str]:
        env = {**os.environ, "DOCKER_HOST": self.host, "DOCKER_CLI_HINTS": "false"}
        if config_dir is not None:
            env["DOCKER_CONFIG"] = str(config_dir)
        return env

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-5000:]
        except OSError:
            return ""

    def cli(self, *args: str, binary: str = DOCKER_CLI, timeout: float = 60,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([binary, *args], capture_output=True, text=True, env=self.env(),
                              timeout=timeout, input=input)

    def start(self, timeout: float = START_TIMEOUT) -> Dockerd:
        self.base.mkdir(parents=True, exist_ok=True)
        self.run_base.mkdir(parents=True, exist_ok=True)
        config = dockerd_config(self.base, self.run_base, self.host, registry=self.registry,
                                bridge=self.bridge)
        (self.base / "daemon.json").write_text(json.dumps(config, indent=1))
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([DOCKERD, "--config-file", str(self.base / "daemon.json")],
                                         stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"dockerd exited with {self.proc.returncode}:\n{self.log()}")
            if self.cli("version", timeout=10).returncode == 0:
                self.containerd = containerd_of(self.proc.pid)
                return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"dockerd did not answer within {timeout:.0f} s:\n{self.log()}")

    def pids(self) -> list[int]:
        return [p for p in (self.proc.pid if self.proc else None, self.containerd) if p]

    def remove_all(self) -> None:
        listed = self.cli("ps", "-aq", timeout=30)
        ids = listed.stdout.split() if listed.returncode == 0 else []
        if ids:
            self.cli("rm", "-f", *ids, timeout=120)
        # dockerd leaves a user network's bridge on the host when it stops
        self.cli("network", "prune", "-f", timeout=60)

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                with contextlib.suppress(Exception):
                    self.remove_all()
                stop_pid(self.proc.pid, 30)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(5)
            self.proc = None
        if self.containerd is not None and alive(self.containerd):
            stop_pid(self.containerd, 10)
        self.containerd = None

    def cleanup(self) -> None:
        """Stop, then sweep what is left under the base (shims, mounts) and remove it."""
        self.stop()
        sweep_leftovers(self.base)
        with contextlib.suppress(OSError):
            remove_tree(self.base)


@contextlib.contextmanager
def dockerd_server(**kwargs: Any) -> Iterator[Dockerd]:
    daemon = Dockerd(**kwargs)
    try:
        yield daemon.start()
    finally:
        daemon.cleanup()
