"""Fixtures for the runtime tests: a busybox root filesystem, runc/crun runtimes and a
``Harness`` that creates containers and removes every trace of them afterwards.

Rules: real runc/crun/conmon only (a missing one skips locally, fails under CI=true); each
test has its own state root under tmp_path; teardown force-deletes every container, kills
its conmon, and fails the test if a conmon process or a cgroup of it is left behind.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from engine.errors import NotFound
from engine.oci.cli_runtime import CLIRuntime
from engine.oci.conmon import monitor_pid
from engine.oci.spec import SpecOptions, build_spec
from engine.plugin import Created, CreateRequest, ExitInfo
from engine.plugins.crun.runtime import CrunRuntime
from engine.plugins.runc.runtime import RuncRuntime
from engine.testing.daemon import require, require_binary

RUNTIMES = ["runc", "crun"]
ID_PREFIX = "engtest-"
PASSWD = (
    "root:x:0:0:root:/root:/bin/sh\n"
    "app:x:1000:1000:app user:/home/app:/bin/sh\n"
    "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
)
GROUP = "root:x:0:\nstaff:x:50:app\nwheel:x:10:root,app\napp:x:1000:\nnogroup:x:65534:\n"


def missing(message: str) -> None:
    """Skip locally, fail under CI: a test whose real dependency is absent proves nothing."""
    require(False, message)


def require_root() -> None:
    if os.geteuid() != 0:
        missing("runtime tests need root (namespaces, cgroups, mounts)")


# --- root filesystem ---------------------------------------------------------------------------


def _build_busybox_rootfs(root: Path) -> None:
    for d in ("bin", "sbin", "usr/bin", "usr/sbin", "etc", "tmp", "root", "home/app",
              "proc", "sys", "dev", "data", "scratch"):  # fmt: skip
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "tmp").chmod(0o1777)
    shutil.copy2(require_binary("busybox"), root / "bin" / "busybox")
    subprocess.run(["chroot", str(root), "/bin/busybox", "--install", "-s"], check=True,
                   timeout=30)  # fmt: skip
    (root / "etc" / "passwd").write_text(PASSWD)
    (root / "etc" / "group").write_text(GROUP)


@pytest.fixture(scope="session")
def busybox_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_root()
    root = tmp_path_factory.mktemp("busybox") / "rootfs"
    _build_busybox_rootfs(root)
    return root


# --- runtimes and containers ---------------------------------------------------------------------


def make_runtime(name: str, state_root: Path) -> CLIRuntime:
    cls = RuncRuntime if name == "runc" else CrunRuntime
    runtime = cls(state_root)
    available = runtime.availability()
    if not available.ok:
        missing(f"{name} is not usable here: {available.reason}")
    return runtime


@pytest.fixture(params=RUNTIMES)
def runtime(request: pytest.FixtureRequest, tmp_path: Path) -> CLIRuntime:
    require_root()
    require_binary("conmon")
    return make_runtime(request.param, tmp_path / "rt-state")


@attrs.define
class Ctr:
    id: str
    bundle: Path
    rootfs: Path
    log_path: Path
    created: Created
    spec: dict[str, Any]

    @property
    def state_dir(self) -> Path:
        return self.bundle


def read_log(path: Path) -> tuple[str, str]:
    """(stdout, stderr) from a k8s-file log: ``TIME STREAM F|P TEXT`` lines."""
    out: dict[str, list[str]] = {"stdout": [], "stderr": []}
    for line in path.read_text().splitlines():
        parts = line.split(" ", 3)
        if len(parts) < 3:
            continue
        text = parts[3] if len(parts) > 3 else ""
        out[parts[1]].append(text + ("\n" if parts[2] == "F" else ""))
    return "".join(out["stdout"]), "".join(out["stderr"])


async def wait_until(predicate: Callable[[], object], *, interval: float = 0.01) -> None:
    """Poll ``predicate`` (run in a thread: it reads /proc) until it is true.

    Polling is deliberate: these are kernel states with no event to wait on. The caller
    bounds the wait with ``trio.fail_after``."""
    while not await trio.to_thread.run_sync(predicate):  # noqa: ASYNC110
        await trio.sleep(interval)


def leftovers(container_id: str, state_dir: Path) -> list[str]:
    found = []
    if monitor_pid(state_dir, container_id) is not None:
        found.append(f"conmon of {container_id} still running")
    for ctrl in Path("/sys/fs/cgroup").iterdir():
        path = ctrl / "engine" / container_id
        if path.exists():
            found.append(f"cgroup {path} left behind")
    return found


def _remove_cgroups(container_id: str) -> None:
    for ctrl in Path("/sys/fs/cgroup").iterdir():
        path = ctrl / "engine" / container_id
        if path.is_dir():
            try:
                path.rmdir()
            except OSError:
                pass


class Harness:
    """Creates containers from a copy of the busybox rootfs; cleans up all of them."""

    def __init__(self, runtime: CLIRuntime, template: Path, tmp: Path) -> None:
        self.runtime = runtime
        self.template = template
        self.tmp = tmp
        self.containers: list[Ctr] = []

    def options(self, args: list[str], **kw: Any) -> tuple[str, Path, SpecOptions]:
        cid = ID_PREFIX + uuid.uuid4().hex[:12]
        bundle = self.tmp / cid
        rootfs = bundle / "rootfs"
        return cid, bundle, SpecOptions(container_id=cid, rootfs=rootfs, args=args, **kw)

    async def create(self, args: list[str], **kw: Any) -> Ctr:
        cid, bundle, options = self.options(args, **kw)
        await trio.to_thread.run_sync(
            lambda: shutil.copytree(self.template, options.rootfs, symlinks=True)
        )
        spec = await trio.to_thread.run_sync(build_spec, options)
        return await self.create_from_spec(cid, bundle, spec)

    async def create_from_spec(self, cid: str, bundle: Path, spec: dict[str, Any]) -> Ctr:
        (bundle / "config.json").write_text(json.dumps(spec))
        log_path = bundle / "ctr.log"
        request = CreateRequest(
            container_id=cid, bundle=bundle, state_dir=bundle, log_path=log_path
        )
        # registered before create: a failed create may still leave runtime state behind
        ctr = Ctr(cid, bundle, Path(spec["root"]["path"]), log_path, Created(0, 0), spec)
        self.containers.append(ctr)
        ctr.created = await self.runtime.create(request)
        return ctr

    async def run(self, args: list[str], **kw: Any) -> tuple[Ctr, ExitInfo]:
        """Create, start and wait for a container; (container, exit info)."""
        ctr = await self.create(args, **kw)
        await self.runtime.start(ctr.id)
        with trio.fail_after(20):
            info = await self.runtime.wait_exit(ctr.id, ctr.state_dir)
        return ctr, info

    async def cleanup(self) -> list[str]:
        problems: list[str] = []
        for ctr in self.containers:
            try:
                await self.runtime.delete(ctr.id, force=True)
            except NotFound:
                pass
            pid = monitor_pid(ctr.state_dir, ctr.id)
            if pid is not None:
                with trio.move_on_after(5):  # conmon exits right after the container

                    def gone(c: Ctr = ctr) -> bool:
                        return monitor_pid(c.state_dir, c.id) is None

                    await wait_until(gone)
                if (pid := monitor_pid(ctr.state_dir, ctr.id)) is not None:
                    os.kill(pid, signal.SIGKILL)
                    problems.append(f"conmon {pid} of {ctr.id} outlived its container")
            problems += [p for p in leftovers(ctr.id, ctr.state_dir) if "cgroup" in p]
            _remove_cgroups(ctr.id)
        return problems


def stray_conmons() -> list[int]:
    """conmon processes of any test container (their cmdline names an ``engtest-`` id)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if cmdline.split(b"\0", 1)[0].endswith(b"conmon") and ID_PREFIX.encode() in cmdline:
            found.append(int(entry.name))
    return found


@pytest.fixture(scope="session", autouse=True)
def no_stray_conmon_after_session() -> Iterator[None]:
    yield
    strays = stray_conmons()
    for pid in strays:
        os.kill(pid, signal.SIGKILL)
    assert not strays, f"conmon processes left by the runtime tests: {strays}"


@pytest.fixture
async def harness(
    runtime: CLIRuntime, busybox_template: Path, tmp_path: Path
) -> AsyncIterator[Harness]:
    h = Harness(runtime, busybox_template, tmp_path)
    problems: list[str] = ["cleanup did not finish within 30 s"]
    try:
        yield h
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(30):
            problems = await h.cleanup()
    assert not problems, problems
