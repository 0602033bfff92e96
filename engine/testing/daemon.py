"""Run a real engined for tests (and for plugin authors' tests): its own temporary root and
run-root, its own bridge, subnet and address pool (so it can run beside a serving daemon and
other test runs), started as a separate process so tests can SIGKILL it, stopped and cleaned
up afterwards.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import weakref
from pathlib import Path
from typing import Any

import attrs

from engine.client.sync import Client
from engine.store.rmtree import remove_tree

ENGINED = [sys.executable, "-m", "engine.supervisor.daemon"]
# Host-wide network slots for tests: slot N is bridge "engtNNN", the Nth /20 of 10.128.0.0/11.
NET_SLOTS = 512
NET_SLOT_DIR = Path("/run/lock/engine-test-nets")
_NET_FLAGS = ("--bridge", "--bip", "--default-address-pool", "--default-address-pools")
_NET_KEYS = ("bridge", "bip", "default-address-pools", "default_address_pools")


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


@attrs.define
class NetSlot:
    """A bridge name, a /24 for the default network and a /20 pool for user networks that no
    other test on this host uses while the slot is held (an flock, dropped at ``release`` or
    when the test process dies). Addresses 10.128.0.0/11: away from the engine's default
    10.89.0.0/16, so tests never touch a daemon serving with the defaults."""

    index: int
    fd: int | None = attrs.field(eq=False, repr=False)

    @property
    def bridge(self) -> str:
        # Fixed width: no slot's name is part of another's (tests grep iptables for them).
        return f"engt{self.index:03d}"

    @property
    def pool(self) -> str:
        return str(ipaddress.IPv4Network("10.128.0.0/20").network_address + (self.index << 12)) + "/20"

    @property
    def subnet(self) -> str:
        """The default network's subnet: the pool's first /24."""
        return self.pool.removesuffix("/20") + "/24"

    @property
    def gateway(self) -> str:
        return str(ipaddress.IPv4Network(self.subnet).network_address + 1)

    def args(self) -> list[str]:
        return ["--bridge", self.bridge, "--bip", f"{self.gateway}/24",
                "--default-address-pool", f"base={self.pool},size=24"]

    def settings(self) -> Any:
        """As engine.network.settings.NetworkSettings (for in-process network tests)."""
        from engine.network.settings import parse_settings

        return parse_settings(self.bridge, f"{self.gateway}/24", [{"base": self.pool, "size": 24}])

    def release(self) -> None:
        """Idempotent: the fd is closed once, never a number reused since."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _try_slot(index: int) -> NetSlot | None:
    fd = os.open(NET_SLOT_DIR / str(index), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return NetSlot(index, fd)


def claim_net_slot(preferred: int | None = None) -> NetSlot:
    """A free network slot; ``preferred`` first (a restarted daemon keeps its bridge)."""
    NET_SLOT_DIR.mkdir(parents=True, exist_ok=True)
    start = random.randrange(NET_SLOTS)  # concurrent test runs rarely probe the same slots
    order = [i for i in [preferred] if i is not None and 0 <= i < NET_SLOTS]
    order += [(start + i) % NET_SLOTS for i in range(NET_SLOTS)]
    for index in order:
        slot = _try_slot(index)
        if slot is not None:
            return slot
    raise RuntimeError(f"all {NET_SLOTS} test network slots are in use ({NET_SLOT_DIR})")


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
        self._net: NetSlot | None = None

    @property
    def own_network_settings(self) -> bool:
        """Whether the test gave bridge settings itself (then no slot is claimed)."""
        return any(a.split("=", 1)[0] in _NET_FLAGS for a in self.extra_args) or any(
            k in _NET_KEYS for k in (self.config or {}))

    @property
    def net(self) -> NetSlot:
        """This daemon's bridge, subnet and pool, claimed on first use and kept across
        restarts of the same base (recorded in ``base/netslot``)."""
        if self._net is None:
            record = self.base / "netslot"
            try:
                preferred: int | None = int(record.read_text())
            except (FileNotFoundError, ValueError):
                preferred = None
            self._net = claim_net_slot(preferred)
            weakref.finalize(self, self._net.release)
            self.base.mkdir(parents=True, exist_ok=True)
            record.write_text(str(self._net.index))
        return self._net

    def network_settings(self) -> Any:
        """The daemon's engine.network.settings.NetworkSettings, read from its flags and
        config file as the daemon reads them (to sweep its networking after it stopped)."""
        from engine.supervisor.config import config_from_args

        config, _, _ = config_from_args(self.args()[len(ENGINED):])
        return config.network_settings()

    def release_net(self) -> None:
        if self._net is not None:
            self._net.release()
            self._net = None

    def args(self) -> list[str]:
        args = [*ENGINED, "--root", str(self.root), "--run-root", str(self.run_root),
                "--config-dir", str(self.base / "etc"), "--log-level", "debug"]
        if not self.own_network_settings:
            args += self.net.args()
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
        self.release_net()

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
