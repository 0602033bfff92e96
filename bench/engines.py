"""The engines under test, behind one docker-like shape: ``cli`` is the argv prefix and
``env`` the environment every command of that engine runs with. The engine (engined +
engctl), podman (no daemon; configs through CONTAINERS_* variables, nothing under /etc) and
docker (dockerd + the containerd it starts, stopped by pid) all live under the work dir."""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import attrs

from bench.timing import run_quiet
from engine.testing.daemon import NetSlot, claim_net_slot
from engine.testing.dockerd import DOCKER_CLI, DOCKERD, containerd_of, dockerd_config
from engine.testing.procs import alive, children, comm, parent_of, stop_pid, wait_until


@attrs.define
class Engine:
    """Common parts: what every engine runs its CLI with. ``base`` holds persistent state,
    ``run_base`` the runtime state (a tmpfs, like /run)."""

    name: str
    base: Path
    run_base: Path
    cli: list[str] = attrs.field(factory=list)
    env: dict[str, str] = attrs.field(factory=lambda: dict(os.environ))
    runtimes: tuple[str, ...] = ("runc", "crun")

    def argv(self, *args: str) -> list[str]:
        return [*self.cli, *args]

    def run(self, *args: str, timeout: float = 300.0) -> None:
        run_quiet(self.argv(*args), timeout=timeout, env=self.env)

    def output(self, *args: str, timeout: float = 120.0) -> str:
        p = subprocess.run(self.argv(*args), capture_output=True, text=True, env=self.env,
                           timeout=timeout, stdin=subprocess.DEVNULL)
        if p.returncode != 0:
            raise RuntimeError(f"{self.name} {' '.join(args)} exited {p.returncode}: {p.stderr.strip()[-400:]}")
        return p.stdout

    def container_pid(self, name: str) -> int:
        doc = json.loads(self.output("inspect", name))
        doc = doc[0] if isinstance(doc, list) else doc
        return int(doc["State"]["Pid"])

    def monitor_pid(self, name: str) -> int:
        """The per-container monitor: the parent of the container's init (conmon, or
        containerd-shim-runc-v2 for docker)."""
        return parent_of(self.container_pid(name))

    def daemon_pids(self) -> list[int]:
        return []

    def start_daemon(self, argv: list[str], log_path: Path, *, timeout: float) -> subprocess.Popen[bytes]:
        """Start this engine's daemon in its own session, logging to ``log_path``; return
        once ``CLI version`` answers (or raise with the log's tail)."""
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                    start_new_session=True)

        def tail() -> str:
            try:
                return log_path.read_text(errors="replace")[-1500:]
            except OSError:
                return ""

        def up() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"{argv[0]} exited {proc.returncode}: {tail()}")
            return subprocess.run(self.argv("version"), capture_output=True, env=self.env).returncode == 0

        if not wait_until(up, timeout, 0.1):
            raise RuntimeError(f"{argv[0]} did not answer within {timeout:.0f} s: {tail()}")
        return proc

    def remove_all(self) -> None:
        ids = self.output("ps", "-aq").split()
        if ids:
            subprocess.run(self.argv("rm", "-f", *ids), capture_output=True, env=self.env, timeout=300)

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass


# --- the engine -------------------------------------------------------------------------------


def engctl_argv() -> list[str]:
    script = Path(sys.executable).parent / "engctl"
    return [str(script)] if script.exists() else [sys.executable, "-m", "engine.cli.main"]


@attrs.define
class EngineD(Engine):
    """engined with its own bridge, subnet and pool (a test network slot of
    engine.testing.daemon, never the default engine0), so a run collides with no other
    engine daemon on the host; with ``docker_api``, also serving the Docker API."""

    registry: str = ""
    default_runtime: str = "crun"
    docker_api: bool = False
    proc: subprocess.Popen[bytes] | None = None
    net: NetSlot | None = None
    net_index: int | None = None  # kept across restarts: the same bridge every time

    def __attrs_post_init__(self) -> None:
        self.cli = engctl_argv()
        self.env = {**os.environ, "ENGINE_HOST": f"unix://{self.run_base}/engine.sock"}

    @property
    def docker_host(self) -> str:
        return f"unix://{self.run_base}/docker.sock"

    def docker_cli(self) -> Engine:
        """The docker CLI pointed at this daemon's Docker API (start it with docker_api)."""
        return Engine(name="engine via docker CLI", base=self.base, run_base=self.run_base,
                      cli=[DOCKER_CLI], env={**os.environ, "DOCKER_HOST": self.docker_host})

    def start(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        if self.net is None:
            self.net = claim_net_slot(self.net_index)
            self.net_index = self.net.index
        args = [sys.executable, "-m", "engine.supervisor.daemon", "--root", str(self.base / "root"),
                "--run-root", str(self.run_base), "--config-dir", str(self.base / "etc"),
                "--default-runtime", self.default_runtime, "--log-level", "warning",
                *self.net.args()]
        if self.registry:
            args += ["--insecure-registry", self.registry]
        if self.docker_api:
            args += ["--docker-host", self.docker_host]
        self.proc = self.start_daemon(args, self.base / "engined.log", timeout=30)

    def daemon_pids(self) -> list[int]:
        if self.proc is None:
            return []
        # helpers the daemon keeps as children count as the daemon; conmon double-forks away
        return [self.proc.pid, *(c for c in children(self.proc.pid) if comm(c) != "conmon")]

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                try:
                    self.remove_all()
                except Exception:  # noqa: BLE001 - the sweep of the work dir catches what is left
                    pass
                stop_pid(self.proc.pid, 20)
            self.proc.wait(5)
            self.proc = None
        if self.net is not None:
            try:
                self._sweep_network(self.net)
            finally:
                self.net.release()
                self.net = None

    def _sweep_network(self, slot: NetSlot) -> None:
        """What the daemon's networking left (nothing, when its containers were removed
        before it stopped): attachments, namespaces, leases, its bridges and its isolation
        chains, undone as the daemon's own reconcile does. Raises if its bridge or chains
        are still there."""
        import trio

        from engine.network import isolation, netns
        from engine.network.networks import NetworkStore, delete_bridge
        from engine.network.reconcile import reconcile

        settings = slot.settings()
        run_netns = self.run_base / "netns"

        async def sweep() -> None:
            store = NetworkStore(self.base / "root" / "networks", settings)
            await reconcile(store, run_netns, keep=())
            for net in await store.list():
                await delete_bridge(net)
            await isolation.remove(settings.chains)
            if await trio.to_thread.run_sync(run_netns.exists):
                await netns.release_dir(run_netns)

        trio.run(sweep)
        left = [slot.bridge] if Path("/sys/class/net", slot.bridge).exists() else []
        chains = subprocess.run(["iptables", "-w", "5", "-S"], capture_output=True, text=True).stdout
        left += [c for c in settings.chains if f"-N {c}" in chains.splitlines()]
        if left:
            raise RuntimeError(f"the engine's networking is still there after its sweep: {left}")


# --- podman -------------------------------------------------------------------------------------


def _hard_limit(which: int, cap: int) -> int:
    hard = resource.getrlimit(which)[1]
    return cap if hard == resource.RLIM_INFINITY else min(hard, cap)


# The network backend start() configures, and the helper binaries it needs. Debian's podman
# only *recommends* them: installed with --no-install-recommends, every pull and run fails
# with 'could not find "netavark"'. scripts/bench.sh installs these packages with podman.
PODMAN_NETWORK_BACKEND = "netavark"
PODMAN_HELPERS = ("netavark", "aardvark-dns")  # each the name of its binary and apt package
# podman 4.3's default helper_binaries_dir
PODMAN_HELPER_DIRS = ("/usr/local/libexec/podman", "/usr/local/lib/podman", "/usr/libexec/podman",
                      "/usr/lib/podman")


@attrs.define
class Podman(Engine):
    registry: str = ""

    def __attrs_post_init__(self) -> None:
        self.cli = ["podman"]
        self.env = {
            **os.environ,
            "CONTAINERS_CONF": str(self.base / "containers.conf"),
            "CONTAINERS_STORAGE_CONF": str(self.base / "storage.conf"),
            "CONTAINERS_REGISTRIES_CONF": str(self.base / "registries.conf"),
        }

    @staticmethod
    def missing(helper_dirs: tuple[str, ...] = PODMAN_HELPER_DIRS) -> str | None:
        install = f"apt-get install podman {' '.join(PODMAN_HELPERS)}"
        if not shutil.which("podman"):
            return f"podman is not installed ({install})"
        for helper in PODMAN_HELPERS:
            if not any(Path(d, helper).is_file() for d in helper_dirs):
                return (f"podman's {helper} is not installed, and the harness configures the "
                        f"{PODMAN_NETWORK_BACKEND} backend ({install})")
        return None

    def start(self) -> None:
        b = self.base
        for d in ("networks", "storage"):
            (b / d).mkdir(parents=True, exist_ok=True)
        for d in ("tmp", "run"):
            (self.run_base / d).mkdir(parents=True, exist_ok=True)
        # Root here lacks CAP_SYS_RESOURCE: podman's default rlimits (nofile 1048576) make the
        # runtime fail with EPERM; podman 4.3 also caps its own nproc at 32768 (peers §2.3).
        nofile = _hard_limit(resource.RLIMIT_NOFILE, 1048576)
        nproc = _hard_limit(resource.RLIMIT_NPROC, 32768)
        (b / "containers.conf").write_text(
            "[containers]\n"
            f'default_ulimits = ["nofile={nofile}:{nofile}", "nproc={nproc}:{nproc}"]\n'
            "[engine]\n"
            'cgroup_manager = "cgroupfs"\n'
            'events_logger = "file"\n'
            f'events_logfile_path = "{b}/events.log"\n'
            'runtime = "crun"\n'
            f'tmp_dir = "{self.run_base}/tmp"\n'
            "[network]\n"
            f'network_backend = "{PODMAN_NETWORK_BACKEND}"\n'
            f'network_config_dir = "{b}/networks"\n')
        (b / "storage.conf").write_text(
            f'[storage]\ndriver = "overlay"\nrunroot = "{self.run_base}/run"\ngraphroot = "{b}/storage"\n'
            '[storage.options.overlay]\nmountopt = "nodev"\n')
        (b / "registries.conf").write_text(
            f'unqualified-search-registries = []\n[[registry]]\nlocation = "{self.registry}"\ninsecure = true\n')

    def stop(self) -> None:
        if (self.base / "containers.conf").exists():
            subprocess.run(self.argv("rm", "-af", "-t", "0"), capture_output=True, env=self.env, timeout=300)


# --- docker -------------------------------------------------------------------------------------


@attrs.define
class Docker(Engine):
    registry: str = ""
    proc: subprocess.Popen[bytes] | None = None
    containerd: int | None = None

    def __attrs_post_init__(self) -> None:
        self.cli = [DOCKER_CLI]
        self.env = {**os.environ, "DOCKER_HOST": f"unix://{self.base}/docker.sock"}

    @staticmethod
    def missing() -> str | None:
        for path in (DOCKERD, DOCKER_CLI):
            if not Path(path).exists():
                return f"{path} is missing (apt-get install docker.io)"
        return None

    def start(self) -> None:
        b = self.base
        b.mkdir(parents=True, exist_ok=True)
        # the private dockerd's daemon.json (iptables/ip-forward/ip-masq off), shared with the
        # tests' engine.testing.dockerd; the default bridge stays on (containers get veths)
        config = dockerd_config(b, self.run_base, self.env["DOCKER_HOST"], registry=self.registry)
        (b / "daemon.json").write_text(json.dumps(config, indent=1))
        self.proc = self.start_daemon([DOCKERD, "--config-file", str(b / "daemon.json")],
                                      b / "dockerd.log", timeout=60)
        self.containerd = containerd_of(self.proc.pid)

    def daemon_pids(self) -> list[int]:
        return [p for p in (self.proc.pid if self.proc else None, self.containerd) if p]

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                self.remove_all()
            except Exception:  # noqa: BLE001 - dockerd is stopped below either way
                pass
            stop_pid(self.proc.pid, 30)
        self.proc.wait(5)
        self.proc = None
        # dockerd stops the containerd it started; make sure, by its pid
        if self.containerd and alive(self.containerd):
            stop_pid(self.containerd, 10)
        self.containerd = None
