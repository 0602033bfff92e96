"""The everyday verbs through the Docker API with the real docker CLI and docker-py: top,
stats, update, diff, export, cp both ways, commit, health checks; compared with what the
engine's own RPC reports."""

from __future__ import annotations

import io
import json
import tarfile
import time
import uuid
from pathlib import Path

import pytest

from engine.supervisor.stats import cgroup_paths

from .conftest import Engine, EngineFactory, docker_clients


@pytest.fixture
def engine(make_engine: EngineFactory, busybox_archive: Path) -> Engine:
    return make_engine(load_busybox=busybox_archive)


@pytest.mark.parametrize("binary", docker_clients())
def test_top_stats_and_update(engine: Engine, binary: str) -> None:
    engine.docker("run", "-d", "--name", "busy", "busybox", "sh", "-c",
                  "dd if=/dev/zero of=/dev/null bs=1k & exec sleep 300", binary=binary)
    # `run -d` answers once the shell started: it forks dd and execs sleep a moment later
    deadline = time.monotonic() + 10
    while not {"sleep", "dd"} <= set(engine.docker("top", "busy", "-o", "pid,comm", binary=binary).stdout.split()):
        assert time.monotonic() < deadline, "dd and sleep never both ran"
        time.sleep(0.1)
    top = engine.docker("top", "busy", binary=binary).stdout.splitlines()
    assert top[0].split()[:2] == ["UID", "PID"]
    assert any(line.endswith("sleep 300") for line in top[1:]), top
    own = engine.docker("top", "busy", "-o", "pid,comm", binary=binary).stdout.split()
    assert own[:2] == ["PID", "COMMAND"] and "sleep" in own and "dd" in own

    row = json.loads(engine.docker("stats", "--no-stream", "--format", "{{json .}}", "busy",
                                   binary=binary).stdout)
    assert row["Name"] == "busy" and row["PIDs"] == "2"
    assert float(row["CPUPerc"].rstrip("%")) > 1.0  # dd spins: the CPU % has two samples
    usage, limit = row["MemUsage"].split(" / ")
    assert usage[0].isdigit() and limit[0].isdigit()

    engine.docker("update", "--memory", "64m", "--cpus", "0.5", "--pids-limit", "50",
                  "--restart", "on-failure:2", "busy", binary=binary)
    rpc = engine.daemon.call("container.inspect", id="busy")["HostConfig"]
    assert (rpc["Memory"], rpc["NanoCpus"], rpc["PidsLimit"]) == (64 << 20, 500_000_000, 50)
    assert rpc["RestartPolicy"] == {"Name": "on-failure", "MaximumRetryCount": 2}
    row = json.loads(engine.docker("stats", "--no-stream", "--format", "{{json .}}", "busy",
                                   binary=binary).stdout)
    assert row["MemUsage"].endswith("/ 64MiB")  # the new limit is the cgroup's
    engine.docker("update", "--cpu-shares", "512", "--cpuset-cpus", "0", "busy", binary=binary)
    shown = engine.docker("inspect", "-f", "{{.HostConfig.CpuShares}} {{.HostConfig.CpusetCpus}}", "busy",
                          binary=binary).stdout.split()
    assert shown == ["512", "0"]
    pid = engine.daemon.call("container.inspect", id="busy")["State"]["Pid"]
    cgroups = cgroup_paths(pid)
    assert (cgroups["cpu"] / "cpu.shares").read_text().strip() == "512"
    assert (cgroups["cpuset"] / "cpuset.cpus").read_text().strip() == "0"
    weighted = engine.docker("run", "-d", "--cpu-shares", "300", "--cpuset-cpus", "0", "busybox", "sleep", "300",
                             binary=binary).stdout.strip()
    pid = engine.daemon.call("container.inspect", id=weighted)["State"]["Pid"]
    assert (cgroup_paths(pid)["cpu"] / "cpu.shares").read_text().strip() == "300"
    assert (cgroup_paths(pid)["cpuset"] / "cpuset.cpus").read_text().strip() == "0"
    engine.docker("rm", "-f", weighted, binary=binary)
    refused = engine.docker("update", "--cpu-rt-runtime", "100", "busy", binary=binary, check=False)
    assert refused.returncode != 0 and "CpuRealtimeRuntime" in refused.stderr
    engine.docker("rm", "-f", "busy", binary=binary)


def test_stats_shapes_for_docker_py(engine: Engine) -> None:
    client = engine.docker_py()
    try:
        ctr = client.containers.run("busybox", ["sleep", "300"], detach=True, name="st")
        one = ctr.stats(stream=False)
        for key in ("read", "preread", "cpu_stats", "precpu_stats", "memory_stats", "blkio_stats",
                    "pids_stats", "networks"):
            assert key in one, key
        assert one["id"] == ctr.id and one["name"] == "/st"
        assert one["pids_stats"]["current"] == 1
        assert one["memory_stats"]["usage"] > 0 and one["memory_stats"]["limit"] > 0
        assert one["cpu_stats"]["system_cpu_usage"] > one["precpu_stats"]["system_cpu_usage"] > 0
        assert one["cpu_stats"]["online_cpus"] >= 1
        assert [e["op"] for e in one["blkio_stats"]["io_service_bytes_recursive"]] == ["read", "write"]
        shot = client.api.stats(ctr.id, stream=False, one_shot=True)
        assert shot["precpu_stats"]["system_cpu_usage"] == 0 and shot["cpu_stats"]["cpu_usage"]["total_usage"] > 0
        started = time.monotonic()
        stream = ctr.stats(stream=True, decode=True)
        items = [next(stream), next(stream), next(stream)]
        assert time.monotonic() - started >= 1.5  # one a second
        assert items[1]["precpu_stats"]["cpu_usage"]["total_usage"] == items[0]["cpu_stats"]["cpu_usage"]["total_usage"]
        stream.close()
        ctr.remove(force=True)
    finally:
        client.close()


@pytest.mark.parametrize("binary", docker_clients())
def test_cp_both_ways_diff_export_commit(engine: Engine, binary: str, tmp_path: Path) -> None:
    engine.docker("run", "-d", "--name", "files", "busybox", "sh", "-c",
                  "mkdir -p /data/sub && echo inside > /data/sub/a.txt && ln -s / /data/root && "
                  "rm /etc/group && exec sleep 300", binary=binary)
    deadline = time.monotonic() + 10
    while engine.docker("exec", "files", "test", "-L", "/data/root", binary=binary, check=False).returncode:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    # out of the container: a directory, a file to stdout as a tar
    engine.docker("cp", "files:/data", str(tmp_path / "out"), binary=binary)
    assert (tmp_path / "out" / "sub" / "a.txt").read_text() == "inside\n"
    assert (tmp_path / "out" / "root").is_symlink() and str((tmp_path / "out" / "root").readlink()) == "/"
    piped = engine.docker("cp", "files:/data/sub/a.txt", "-", binary=binary).stdout
    assert "inside" in piped
    missing = engine.docker("cp", "files:/nope", str(tmp_path / "x"), binary=binary, check=False)
    assert missing.returncode == 1 and "/nope" in missing.stderr
    # into the container: a file to a new name, a directory, through the symlink to /
    (tmp_path / "in.txt").write_text("from the host\n")
    (tmp_path / "tree" / "deep").mkdir(parents=True)
    (tmp_path / "tree" / "deep" / "f").write_text("deep file\n")
    engine.docker("cp", str(tmp_path / "in.txt"), "files:/data/renamed.txt", binary=binary)
    engine.docker("cp", str(tmp_path / "tree"), "files:/data/", binary=binary)
    unique = f"cp-{uuid.uuid4().hex}.txt"
    engine.docker("cp", str(tmp_path / "in.txt"), f"files:/data/root/tmp/{unique}", binary=binary)
    shown = engine.docker("exec", "files", "cat", "/data/renamed.txt", "/data/tree/deep/f", f"/tmp/{unique}",
                          binary=binary).stdout
    assert shown == "from the host\ndeep file\nfrom the host\n"
    assert not Path("/tmp", unique).exists()  # the link to / resolved inside the container

    changes = engine.docker("diff", "files", binary=binary).stdout.splitlines()
    assert "A /data" in changes and "A /data/renamed.txt" in changes
    assert "D /etc/group" in changes and "C /etc" in changes
    assert sorted(changes) == sorted(f"{'CAD'[c['Kind']]} {c['Path']}"
                                     for c in engine.daemon.call("container.diff", id="files"))

    engine.docker("export", "-o", str(tmp_path / "fs.tar"), "files", binary=binary)
    with tarfile.open(tmp_path / "fs.tar") as tar:
        names = set(tar.getnames())
        assert {"bin/busybox", "data/sub/a.txt", "data/renamed.txt"} <= names
        assert "etc/group" not in names
        member = tar.extractfile("data/tree/deep/f")
        assert member is not None and member.read() == b"deep file\n"

    committed = engine.docker("commit", "--change", 'CMD ["cat", "/data/renamed.txt"]', "-m", "snap",
                              "files", "snap:v1", binary=binary).stdout.strip()
    assert committed == engine.daemon.call("image.inspect", id="snap:v1")["Id"]
    ran = engine.docker("run", "--rm", "snap:v1", binary=binary).stdout
    assert ran == "from the host\n"
    engine.docker("rm", "-f", "files", binary=binary)
    engine.docker("rmi", "snap:v1", binary=binary)


@pytest.mark.parametrize("binary", docker_clients())
def test_cp_of_a_stopped_container_sees_its_volume_and_bind(engine: Engine, binary: str, tmp_path: Path) -> None:
    """As dockerd mounts them for the copy: docker cp out of and into a named volume and a
    bind of a stopped container reaches them, not the container's layer; the next run sees
    what was copied in."""
    volume = f"cpv-{uuid.uuid4().hex[:8]}"
    bind = tmp_path / "bind"
    bind.mkdir()
    (bind / "host.txt").write_text("on the host\n")
    engine.docker("create", "--name", "idle", "-v", f"{volume}:/data", "-v", f"{bind}:/bound", "busybox",
                  "sh", "-c", "cat /data/in.txt /bound/in.txt; echo made > /data/made.txt", binary=binary)
    try:
        (tmp_path / "in.txt").write_text("copied in\n")
        engine.docker("cp", str(tmp_path / "in.txt"), "idle:/data/", binary=binary)
        engine.docker("cp", str(tmp_path / "in.txt"), "idle:/bound/in.txt", binary=binary)
        mountpoint = Path(engine.docker("volume", "inspect", "-f", "{{.Mountpoint}}", volume,
                                        binary=binary).stdout.strip())
        assert (mountpoint / "in.txt").read_text() == "copied in\n"
        assert (bind / "in.txt").read_text() == "copied in\n"
        engine.docker("cp", "idle:/bound/host.txt", str(tmp_path / "out.txt"), binary=binary)
        assert (tmp_path / "out.txt").read_text() == "on the host\n"
        assert "A /data/in.txt" not in engine.docker("diff", "idle", binary=binary).stdout.splitlines()
        engine.docker("start", "-a", "idle", binary=binary)
        assert engine.docker("logs", "idle", binary=binary).stdout == "copied in\ncopied in\n"
        piped = engine.docker("cp", "idle:/data/made.txt", "-", binary=binary).stdout
        assert "made" in piped
    finally:
        engine.docker("rm", "-f", "idle", binary=binary, check=False)
        engine.docker("volume", "rm", "-f", volume, binary=binary, check=False)


def test_docker_py_archive_and_stat(engine: Engine) -> None:
    client = engine.docker_py()
    try:
        ctr = client.containers.create("busybox", ["true"], name="arch")  # not running: still served
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            data = b"#!/bin/sh\necho run\n"
            info = tarfile.TarInfo("script.sh")
            info.size, info.mode = len(data), 0o755
            tar.addfile(info, io.BytesIO(data))
        assert ctr.put_archive("/usr", buf.getvalue())
        chunks, stat = ctr.get_archive("/usr/script.sh")
        assert stat["name"] == "script.sh" and stat["size"] == len(data)
        assert stat["mode"] & 0o777 == 0o755 and not stat["mode"] & (1 << 31)
        with tarfile.open(fileobj=io.BytesIO(b"".join(chunks))) as tar:
            got = tar.extractfile("script.sh")
            assert got is not None and got.read() == data
        _, dir_stat = ctr.get_archive("/usr")
        assert dir_stat["mode"] & (1 << 31)  # Go's ModeDir
        import docker

        with pytest.raises(docker.errors.NotFound):
            ctr.get_archive("/nope")
        ctr.remove()
    finally:
        client.close()


def test_health_in_inspect_and_create(engine: Engine) -> None:
    engine.docker("run", "-d", "--name", "doc", "--health-cmd", "test -f /tmp/ok", "--health-interval", "300ms",
                  "--health-retries", "1", "busybox", "sh", "-c", "touch /tmp/ok; exec sleep 300")

    def health() -> dict:
        return json.loads(engine.docker("inspect", "--format", "{{json .State.Health}}", "doc").stdout)

    def wait_for(status: str) -> dict:
        deadline = time.monotonic() + 15
        while (h := health())["Status"] != status:
            assert time.monotonic() < deadline, h
            time.sleep(0.2)
        return h

    healthy = wait_for("healthy")
    assert healthy["Log"] and healthy["Log"][-1]["ExitCode"] == 0
    config = json.loads(engine.docker("inspect", "--format", "{{json .Config.Healthcheck}}", "doc").stdout)
    assert config["Test"] == ["CMD-SHELL", "test -f /tmp/ok"] and config["Interval"] == 300_000_000
    engine.docker("exec", "doc", "rm", "/tmp/ok")
    sick = wait_for("unhealthy")
    assert sick["FailingStreak"] >= 1 and sick["Log"][-1]["ExitCode"] == 1
    ps = engine.docker("ps", "--format", "{{.Status}}").stdout
    assert "(unhealthy)" in ps
    engine.docker("rm", "-f", "doc")
    # docker-py: a ["CMD", ...] test and a disabled one
    client = engine.docker_py()
    try:
        ctr = client.containers.run("busybox", ["sleep", "300"], detach=True, healthcheck={
            "test": ["CMD", "true"], "interval": 300_000_000, "retries": 1})
        deadline = time.monotonic() + 15
        while client.api.inspect_container(ctr.id)["State"]["Health"]["Status"] != "healthy":
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert client.api.inspect_container(ctr.id)["Config"]["Healthcheck"]["Test"] == ["CMD", "true"]
        ctr.remove(force=True)
        none = client.containers.create("busybox", ["true"], healthcheck={"test": ["NONE"]})
        assert "Health" not in client.api.inspect_container(none.id)["State"]
        none.remove()
    finally:
        client.close()
