"""docker-py (the ``docker`` package from PyPI) against engine's Docker API: its common calls,
unchanged, each test with its own engined and registry."""

from __future__ import annotations

import io
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest

from engine.testing.daemon import processes_mentioning, require
from engine.testing.procs import wait_until

from .conftest import Engine, EngineFactory

docker = pytest.importorskip("docker", reason="docker-py is in the test extras (pip install -e .[test])")


def test_system_calls(engine: Engine) -> None:
    client = engine.docker_py()
    try:
        assert client.ping() is True
        version = client.version()
        assert version["ApiVersion"] == "1.47"
        assert client.api.api_version == "1.47"  # negotiated ("auto")
        info = client.info()
        assert info["Images"] == 0 and info["OSType"] == "linux"
    finally:
        client.close()


def test_pull_run_exec_logs_remove(engine: Engine) -> None:
    client = engine.docker_py()
    try:
        repo = engine.image_ref().rsplit(":", 1)[0]
        image = client.images.pull(repo, tag="latest")
        assert engine.image_ref() in image.tags
        assert client.images.get(engine.image_ref()).id == image.id
        assert [i.id for i in client.images.list()] == [image.id]

        # run without detach: create, start, wait, logs
        out = client.containers.run(engine.image_ref(), ["sh", "-c", "echo from-run"], remove=False)
        assert out == b"from-run\n"

        ctr = client.containers.run(engine.image_ref(), ["sh", "-c", "echo ready; exec sleep 300"],
                                    detach=True, name="py", labels={"k": "v"})
        assert ctr.name == "py"
        ctr.reload()
        assert ctr.status == "running"
        assert ctr.labels["k"] == "v"
        assert [c.name for c in client.containers.list(filters={"label": "k=v"})] == ["py"]
        deadline = time.monotonic() + 10
        while b"ready" not in ctr.logs() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert ctr.logs() == b"ready\n"

        code, output = ctr.exec_run(["sh", "-c", "echo $((6*7)); exit 4"])
        assert (code, output) == (4, b"42\n")
        code, (out_b, err_b) = ctr.exec_run(["sh", "-c", "echo o; echo e >&2"], demux=True)
        assert (code, out_b, err_b) == (0, b"o\n", b"e\n")

        ctr.stop(timeout=1)
        ctr.reload()
        assert ctr.status == "exited"
        assert ctr.wait()["StatusCode"] == 137
        ctr.remove()
        with pytest.raises(docker.errors.NotFound):
            client.containers.get("py")
        client.containers.prune()
        assert client.containers.list(all=True) == []
        assert engine.daemon.call("container.list", all=True) == []
    finally:
        client.close()


def test_errors_are_docker_py_exceptions(engine: Engine) -> None:
    client = engine.docker_py()
    try:
        with pytest.raises(docker.errors.ImageNotFound):
            client.images.get("nosuch:latest")
        with pytest.raises(docker.errors.NotFound):
            client.containers.get("nosuch")
        with pytest.raises(docker.errors.ImageNotFound):
            client.api.create_container("nosuch:latest", "true")
        client.images.pull(engine.image_ref())
        with pytest.raises(docker.errors.APIError) as refused:
            client.containers.create(engine.image_ref(), "true", blkio_weight=300)
        assert refused.value.status_code == 400
        assert "HostConfig.BlkioWeight" in str(refused.value)
        with pytest.raises(docker.errors.APIError) as later:
            client.images.search("busybox")  # image search: not served
        assert later.value.status_code == 501
        assert "not served by engine's Docker API yet" in str(later.value)
    finally:
        client.close()


def test_networks_and_events(engine: Engine) -> None:
    client = engine.docker_py()
    try:
        since = time.time()
        net = client.networks.create("pynet", driver="bridge", labels={"a": "b"})
        assert client.networks.get(net.id).name == "pynet"
        assert "pynet" in [n.name for n in client.networks.list()]
        assert [n.name for n in client.networks.list(filters={"label": "a=b"})] == ["pynet"]
        net.remove()
        assert "pynet" not in [n.name for n in client.networks.list()]
        events = list(client.events(since=since, until=time.time() + 0.5, decode=True,
                                    filters={"type": "network"}))
        assert [(e["Action"], e["Actor"]["Attributes"]["name"]) for e in events] == [
            ("create", "pynet"), ("destroy", "pynet")]
    finally:
        client.close()


def _exec_inspect_until(client: object, exec_id: str, done: object, timeout: float = 20) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        info = client.api.exec_inspect(exec_id)  # type: ignore[attr-defined]
        if done(info) or time.monotonic() > deadline:  # type: ignore[operator]
            return info  # type: ignore[no-any-return]
        time.sleep(0.1)


def _exec_events(api: Any, container_id: str, since: int) -> list[tuple[str, ...]]:
    """(action, execID[, exitCode]) of the container's exec events from ``since`` on."""
    found: list[tuple[str, ...]] = []
    for event in api.events(since=since, until=int(time.time()) + 1, decode=True,
                            filters={"container": container_id}):
        attrs_ = event["Actor"]["Attributes"]
        if event["Action"].startswith("exec_"):
            code = (attrs_["exitCode"],) if "exitCode" in attrs_ else ()
            found.append((event["Action"], attrs_.get("execID", ""), *code))
    return found


def _tar_of_one_empty_file(name: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.addfile(tarfile.TarInfo(name))
    return buf.getvalue()


def test_exec_ids_outlive_a_daemon_restart(make_engine: EngineFactory, busybox_archive: Path) -> None:
    """An exec's id still answers after the daemon was SIGKILLed and started again (its
    session runs on under its own conmon): running with its pid, then its exit code, also
    for one that ended while no daemon ran. Removing the container removes its execs."""
    engine = make_engine(load_busybox=busybox_archive)
    client = engine.docker_py()
    try:
        since = int(time.time())
        ctr = client.containers.run("busybox", ["sleep", "300"], detach=True, name="execs")
        api = client.api
        done = api.exec_create(ctr.id, ["sh", "-c", "exit 5"])["Id"]
        api.exec_start(done)
        # `ending` ends once the test says so, while no daemon runs (a `sleep 1` ended before
        # the kill when the events query above took its 1-2 s)
        ending = api.exec_create(ctr.id, ["sh", "-c", "until [ -e /tmp/stop-ending ]; do sleep 0.1; done; exit 3"])["Id"]
        api.exec_start(ending, detach=True)
        # `running` runs until the test lets it end (a fixed sleep could end before the
        # daemon is back on a loaded machine)
        running_cmd = "until [ -e /tmp/end ]; do sleep 0.1; done; exit 7"
        running = api.exec_create(ctr.id, ["sh", "-c", running_cmd])["Id"]
        api.exec_start(running, detach=True)
        waiting = api.exec_create(ctr.id, ["true"], environment=["SECRET=x"])["Id"]
        before = _exec_inspect_until(client, running, lambda i: i["Pid"] > 0)
        assert before["Running"] is True and before["Pid"] > 0, before
        assert api.exec_inspect(done)["ExitCode"] == 5
        # the events name execs by these ids, in dockerd's words
        seen = _exec_events(api, ctr.id, since)
        assert ("exec_create: sh -c exit 5", done) in seen and ("exec_start: sh -c exit 5", done) in seen
        assert ("exec_die", done, "5") in seen, seen
        assert ("exec_create: true", waiting) in seen

        init_pid = api.inspect_container(ctr.id)["State"]["Pid"]
        engine.daemon.kill9()
        Path(f"/proc/{init_pid}/root/tmp/stop-ending").touch()  # through the container's root
        assert wait_until(lambda: not processes_mentioning("stop-ending"), 10), "`ending` did not end"
        restarted = int(time.time())
        engine.daemon.start()

        after = api.exec_inspect(running)
        assert (after["Running"], after["ExitCode"], after["Pid"]) == (True, None, before["Pid"]), after
        assert after["ProcessConfig"]["arguments"] == ["-c", running_cmd]
        assert running in (api.inspect_container(ctr.id)["ExecIDs"] or [])
        assert ctr.put_archive("/tmp", _tar_of_one_empty_file("end"))  # not an exec: ExecIDs stay as they are
        ended = _exec_inspect_until(client, ending, lambda i: not i["Running"])
        assert (ended["Running"], ended["ExitCode"]) == (False, 3), ended
        assert ended["Pid"] > 0
        assert (api.exec_inspect(done)["Running"], api.exec_inspect(done)["ExitCode"]) == (False, 5)
        assert api.exec_inspect(waiting)["Running"] is False
        assert api.exec_inspect(waiting)["ExitCode"] is None

        final = _exec_inspect_until(client, running, lambda i: not i["Running"])
        assert (final["Running"], final["ExitCode"], final["Pid"]) == (False, 7, before["Pid"]), final
        # adopted sessions' ends carry their Docker ids too
        seen = _exec_events(api, ctr.id, restarted)
        assert ("exec_die", running, "7") in seen and ("exec_die", ending, "3") in seen, seen
        assert api.inspect_container(ctr.id)["ExecIDs"] is None

        # the exit code was written down: a second restart still knows it
        engine.daemon.stop()
        engine.daemon.start()
        assert api.exec_inspect(running)["ExitCode"] == 7
        api.exec_start(waiting)  # created before the restarts, started after
        assert api.exec_inspect(waiting)["ExitCode"] == 0

        records = engine.daemon.root / "dockerapi" / "execs"
        assert {p.stat().st_mode & 0o777 for p in records.iterdir()} == {0o600}  # environments
        ctr.remove(force=True)
        with pytest.raises(docker.errors.NotFound):
            api.exec_inspect(running)
        deadline = time.monotonic() + 5
        while list(records.iterdir()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert list(records.iterdir()) == []
    finally:
        client.close()


def test_update_memory_swap(make_engine: EngineFactory, busybox_archive: Path) -> None:
    """``container.update(mem_limit=, memswap_limit=)``: MemorySwap is kept (inspect), written
    to the running container's cgroup and kept for its next start; dockerd's 400s for a swap
    limit below the memory limit, and for a memory limit above the kept swap limit alone."""
    from engine.supervisor.host_options import swap_accounting
    from engine.supervisor.stats import cgroup_paths

    require(swap_accounting(), "the kernel's swap accounting (memory.memsw.* of cgroup v1)")
    mib = 1024 * 1024
    engine = make_engine(load_busybox=busybox_archive)
    client = engine.docker_py()

    def limits() -> tuple[int, int, int, int]:
        ctr.reload()
        memsw = cgroup_paths(ctr.attrs["State"]["Pid"])["memory"] / "memory.memsw.limit_in_bytes"
        limit = int(memsw.read_text())
        host = ctr.attrs["HostConfig"]
        return host["Memory"], host["MemorySwap"], limit, int(memsw.with_name("memory.limit_in_bytes").read_text())

    try:
        ctr = client.containers.run("busybox", ["sleep", "300"], detach=True, name="swap", mem_limit="32m")
        assert limits() == (32 * mib, 64 * mib, 64 * mib, 32 * mib)  # dockerd's default: twice the memory
        ctr.update(mem_limit="48m", memswap_limit="200m")
        assert limits() == (48 * mib, 200 * mib, 200 * mib, 48 * mib)
        ctr.update(memswap_limit="100m")  # the swap limit alone, over the kept memory limit
        assert limits() == (48 * mib, 100 * mib, 100 * mib, 48 * mib)

        with pytest.raises(docker.errors.APIError) as below:
            ctr.update(mem_limit="64m", memswap_limit="40m")
        assert below.value.status_code == 400
        assert "Minimum memoryswap limit should be larger than memory limit" in str(below.value)
        with pytest.raises(docker.errors.APIError) as alone:
            ctr.update(memswap_limit="40m")  # below the kept 48m
        assert alone.value.status_code == 400
        assert "Minimum memoryswap limit should be larger than memory limit" in str(alone.value)
        with pytest.raises(docker.errors.APIError) as over:
            ctr.update(mem_limit="128m")  # above the kept 100m swap limit, without a new one
        assert over.value.status_code == 409  # dockerd's
        assert "update the memoryswap at the same time" in str(over.value)
        assert limits() == (48 * mib, 100 * mib, 100 * mib, 48 * mib)  # the refusals changed nothing

        ctr.update(mem_limit="128m", memswap_limit=-1)
        memory, swap, limit, _ = limits()
        assert (memory, swap) == (128 * mib, -1) and limit > 2**60  # unlimited
        ctr.update(memswap_limit="300m")
        ctr.restart(timeout=0)  # the next start takes the kept limits
        assert limits() == (128 * mib, 300 * mib, 300 * mib, 128 * mib)
        ctr.remove(force=True)

        bare = client.containers.run("busybox", ["sleep", "300"], detach=True, name="bare")
        with pytest.raises(docker.errors.APIError) as no_memory:
            bare.update(memswap_limit="100m")
        assert no_memory.value.status_code == 400
        assert "You should always set the Memory limit when using Memoryswap limit" in str(no_memory.value)
        bare.remove(force=True)
    finally:
        client.close()


def test_start_waits_for_a_copy_out_of_the_stopped_container(make_engine: EngineFactory,
                                                              busybox_archive: Path) -> None:
    """docker holds a container's lock for a whole cp: a start of a stopped container while
    a copy out of it is being read waits until the copy ends (here: until the slow reader
    has read it all), and the copy is whole."""
    import io
    import tarfile
    import threading

    engine = make_engine(load_busybox=busybox_archive)
    client, starter = engine.docker_py(), engine.docker_py()
    size = 48 * 1024 * 1024  # far more than the socket buffers: the reader holds the copy
    try:
        ctr = client.containers.run("busybox", ["sh", "-c", f"head -c {size} /dev/zero > /big"], detach=True,
                                    name="copied")
        assert ctr.wait(timeout=60)["StatusCode"] == 0
        ctr.reload()
        assert ctr.status == "exited"
        first_run = ctr.attrs["State"]["StartedAt"]

        chunks, stat = ctr.get_archive("/big", chunk_size=64 * 1024)
        assert stat["size"] == size
        data = bytearray(next(chunks))  # the copy has begun; the reader stalls
        started: list[float] = []
        failed: list[BaseException] = []

        def start() -> None:
            try:
                starter.containers.get("copied").start()
                started.append(time.monotonic())
            except BaseException as e:
                failed.append(e)

        thread = threading.Thread(target=start, daemon=True)
        thread.start()
        thread.join(2.0)
        assert not started and not failed, "the start did not wait for the copy"
        assert engine.daemon.call("container.inspect", id="copied")["State"]["Status"] == "exited"
        for chunk in chunks:
            data += chunk
        copied = time.monotonic()
        thread.join(30)
        assert not failed, failed
        assert started and started[0] >= copied - 0.5
        with tarfile.open(fileobj=io.BytesIO(bytes(data))) as tar:
            member = tar.getmember("big")
            assert member.size == size
        ctr.reload()
        assert ctr.attrs["State"]["StartedAt"] > first_run  # it started again, after the copy
        ctr.remove(force=True)
    finally:
        client.close()
        starter.close()
