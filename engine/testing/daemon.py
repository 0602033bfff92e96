"""Run a real engined for tests (and for plugin authors' tests): its own temporary root and
run-root, started as a separate process so tests can SIGKILL it, stopped and cleaned up
afterwards.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from engine.client.sync import Client
from engine.store.rmtree import remove_tree

ENGINED = [sys.executable, "-m", "engine.supervisor.daemon"]


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(condition: bool, reason: str) -> None:
    """Skip the test locally when ``condition`` is false, fail it under CI=true: a test
    whose real dependency is absent proves nothing."""
    import pytest

    if condition:
        return
    if in_ci():
        pytest.fail(f"required for this test under CI: {reason}")
    pytest.skip(reason)


def require_binary(name: str) -> str:
    """The binary's path (see ``require``)."""
    path = shutil.which(name)
    require(path is not None, f"{name} is not installed (the README's setup command installs it)")
    assert path is not None
    return path


class Daemon:
    def __init__(self, base: Path | None = None, *, extra_args: list[str] | None = None,
                 config: dict[str, Any] | None = None, env: dict[str, str] | None = None) -> None:
        # Short paths: a unix socket path must fit in 108 bytes.
        self.base = base or Path(tempfile.mkdtemp(prefix="eng-"))
        self.root = self.base / "root"
        self.run_root = self.base / "run"
        self.socket = self.run_root / "engine.sock"
        self.host = f"unix://{self.socket}"
        self.log_path = self.base / "engined.log"
        self.extra_args = list(extra_args or [])
        self.config = config
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None

    def args(self) -> list[str]:
        args = [*ENGINED, "--root", str(self.root), "--run-root", str(self.run_root),
                "--config-dir", str(self.base / "etc"), "--log-level", "debug"]
        if self.config is not None:
            path = self.base / "daemon.json"
            path.write_text(json.dumps(self.config))
            args += ["--config", str(path)]
        return args + self.extra_args

    def start(self, timeout: float = 20.0) -> Daemon:
        self.base.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **(self.env or {})}
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.args(), stdout=log, stderr=log, env=env,
                                     start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"engined exited with {self.proc.returncode}:\n{self.log()}")
            try:
                with Client(self.host, timeout=2) as c:
                    if c.call("system.ping") == "pong":
                        return self
            except Exception:
                time.sleep(0.02)
        raise RuntimeError(f"engined did not answer within {timeout}s:\n{self.log()}")

    def client(self, timeout: float | None = 60) -> Client:
        return Client(self.host, timeout=timeout).connect()

    def call(self, method: str, **params: Any) -> Any:
        with self.client() as c:
            return c.call(method, params)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-20000:]
        except FileNotFoundError:
            return ""

    def stop(self, timeout: float = 20.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(5)

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def remove_all_containers(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            with self.client(timeout=60) as c:
                for ctr in c.call("container.list", all=True):
                    try:
                        c.call("container.remove", id=ctr["Id"], force=True)
                    except Exception:  # noqa: BLE001 - best effort; the sweep below catches the rest
                        pass
        except Exception:  # noqa: BLE001
            pass

    def cleanup(self) -> None:
        """Remove containers, stop the daemon, then sweep whatever is left: monitor and
        container processes started under our paths, mounts under our base, netns."""
        self.remove_all_containers()
        self.stop()
        sweep_leftovers(self.base)
        with contextlib.suppress(OSError):
            remove_tree(self.base)  # a test's container may leave a tree of any depth

    def __enter__(self) -> Daemon:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        if text.encode() in cmdline:
            found.append(int(entry))
    return found


def mounts_under(base: Path) -> list[str]:
    points = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4].replace("\\040", " ")
            if point == str(base) or point.startswith(str(base) + "/"):
                points.append(point)
    return points


def sweep_leftovers(base: Path) -> dict[str, int]:
    """Kill processes whose command line names ``base`` (conmon does) and their containers,
    then unmount everything under ``base``. Returns what it had to clean."""
    pids = processes_mentioning(str(base))
    for pid in pids:
        try:
            children = open(f"/proc/{pid}/task/{pid}/children").read().split()
        except OSError:
            children = []
        for target in [*map(int, children), pid]:
            try:
                os.kill(target, signal.SIGKILL)
            except ProcessLookupError:
                pass
    mounts = mounts_under(base)
    for point in sorted(mounts, key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True)
    return {"processes": len(pids), "mounts": len(mounts)}


def record_rpc_methods(monkeypatch: Any, host: str) -> list[str]:
    """Point engctl, run in this process (``engine.cli.main.run``), at the daemon ``host``
    and record the RPC methods it calls, in order (``monkeypatch``: pytest's fixture)."""
    calls: list[str] = []
    request = Client._request

    def recording(self: Client, method: str, params: dict[str, object]) -> int:
        calls.append(method)
        return request(self, method, params)

    monkeypatch.setattr(Client, "_request", recording)
    monkeypatch.setenv("ENGINE_HOST", host)
    return calls
