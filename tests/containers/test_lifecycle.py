"""The container life cycle against real runc and crun, conmon and overlay mounts."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from engine.errors import AlreadyExists, Conflict, InvalidArgument, NotFound
from engine.testing.daemon import Daemon, mounts_under, processes_mentioning

from .conftest import run_attached


def wait_state(d: Daemon, cid: str, status: str, timeout: float = 15) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        info = d.call("container.inspect", id=cid)
        if info["State"]["Status"] == status:
            return info
        assert time.monotonic() < deadline, f"{cid} stayed {info['State']['Status']}, wanted {status}"
        time.sleep(0.05)


def test_run_attached_streams_output_and_returns_the_exit_code(engine: Daemon) -> None:
    code, out, err = run_attached(engine, cmd=["sh", "-c", "echo hello; echo oops >&2; exit 3"])
    assert code == 3
    assert out == b"hello\n" and err == b"oops\n"


def test_run_rm_returns_once_the_container_is_gone(engine: Daemon) -> None:
    # docker's `run --rm`: when it returns, the container is gone and its name is free;
    # its mount, runtime state and files follow within moments.
    ids = []
    for round_ in range(3):
        with engine.client() as c:
            cid = c.call("container.create", image="busybox", name="once", auto_remove=True,
                         cmd=["sh", "-c", f"echo round {round_}; exit {round_}"])["Id"]
            stream = c.stream("container.start", id=cid, attach=True)
            out = b"".join(item["data"] for item in stream)
            assert out == f"round {round_}\n".encode() and stream.result["ExitCode"] == round_
            with pytest.raises(NotFound):
                c.call("container.inspect", id=cid)
            assert cid not in [row["Id"] for row in c.call("container.list", all=True)]
            ids.append(cid)
    deadline = time.monotonic() + 10
    while mounts_under(engine.root) or any(
            (engine.root / "containers" / cid).exists() or (engine.run_root / "containers" / cid).exists()
            for cid in ids):
        assert time.monotonic() < deadline, (mounts_under(engine.root), ids)
        time.sleep(0.05)


def test_an_interrupted_removal_is_finished_at_start_up(engine: Daemon) -> None:
    cid = engine.call("container.create", image="busybox", name="half-gone", cmd=["true"])["Id"]
    engine.call("container.start", id=cid)
    wait_state(engine, cid, "exited")
    engine.stop()
    state_file = engine.root / "containers" / cid / "state.json"
    state = json.loads(state_file.read_text())
    state["state"] = "removing"  # as if the daemon died right after telling the removal
    state_file.write_text(json.dumps(state))
    engine.start()
    names = [row["Names"] for row in engine.call("container.list", all=True)]
    assert not any("half-gone" in str(n) for n in names)
    deadline = time.monotonic() + 10
    while (engine.root / "containers" / cid).exists():
        assert time.monotonic() < deadline, "the removal was not finished"
        time.sleep(0.05)
    engine.call("container.create", image="busybox", name="half-gone", cmd=["true"])  # name is free


def wait_log(d: Daemon, cid: str, text: bytes, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with d.client() as c:
            if text in b"".join(i["data"] for i in c.stream("container.logs", id=cid)):
                return
        assert time.monotonic() < deadline, f"{text!r} never appeared in the logs of {cid}"
        time.sleep(0.05)


def test_create_start_stop_restart_rm(engine: Daemon) -> None:
    cid = engine.call("container.create", image="busybox", name="web", cmd=["sleep", "1000"])["Id"]
    info = engine.call("container.inspect", id="web")
    assert info["State"]["Status"] == "created" and info["Id"] == cid
    assert info["HostConfig"]["Runtime"] == engine.runtime  # type: ignore[attr-defined]
    engine.call("container.start", id="web")
    info = wait_state(engine, cid, "running")
    pid = info["State"]["Pid"]
    assert pid > 0 and Path(f"/proc/{pid}").exists()
    assert [c["Names"] for c in engine.call("container.list")] == [["web"]]
    with pytest.raises(Conflict, match="running"):
        engine.call("container.remove", id="web")
    with pytest.raises(AlreadyExists, match="web"):
        engine.call("container.create", image="busybox", name="web", cmd=["true"])
    result = engine.call("container.stop", id="web", timeout=1)
    info = engine.call("container.inspect", id="web")
    assert info["State"]["Status"] == "exited" and not Path(f"/proc/{pid}").exists()
    assert result["exit_code"] == info["State"]["ExitCode"]
    assert engine.call("container.list") == []
    assert len(engine.call("container.list", all=True)) == 1
    engine.call("container.restart", id=cid[:12], timeout=1)
    wait_state(engine, cid, "running")
    engine.call("container.remove", id="web", force=True)
    with pytest.raises(NotFound):
        engine.call("container.inspect", id="web")
    assert not mounts_under(engine.root / "storage" / "overlay" / "containers")
    assert not processes_mentioning(cid)


def test_stop_escalates_to_sigkill_after_the_timeout(engine: Daemon) -> None:
    cid = engine.call("container.create", image="busybox",
                      cmd=["sh", "-c", "trap '' TERM; while :; do sleep 0.1; done"])["Id"]
    engine.call("container.start", id=cid)
    wait_state(engine, cid, "running")
    t0 = time.monotonic()
    engine.call("container.stop", id=cid, timeout=1)
    elapsed = time.monotonic() - t0
    info = engine.call("container.inspect", id=cid)
    assert 0.9 < elapsed < 8
    assert info["State"]["ExitCode"] == 137


def test_kill_pause_unpause_and_wait(engine: Daemon) -> None:
    # pid 1 ignores signals it has no handler for (as under docker), so install one.
    cid = engine.call("container.create", image="busybox",
                      cmd=["sh", "-c", "trap 'exit 143' TERM; echo ready; while :; do sleep 0.1; done"])["Id"]
    engine.call("container.start", id=cid)
    wait_state(engine, cid, "running")
    wait_log(engine, cid, b"ready")
    engine.call("container.pause", id=cid)
    assert engine.call("container.inspect", id=cid)["State"]["Paused"] is True
    with pytest.raises(Conflict, match="paused"):
        engine.call("container.pause", id=cid)
    engine.call("container.unpause", id=cid)
    wait_state(engine, cid, "running")
    engine.call("container.kill", id=cid, signal="SIGTERM")
    assert engine.call("container.wait", id=cid)["StatusCode"] == 143
    with pytest.raises(InvalidArgument, match="signal"):
        engine.call("container.kill", id=cid, signal="SIGNOPE")


def test_logs_tail_since_and_follow(engine: Daemon) -> None:
    cid = engine.call("container.create", image="busybox",
                      cmd=["sh", "-c", "for i in 1 2 3 4 5; do echo line$i; done; sleep 1; echo late"])["Id"]
    engine.call("container.start", id=cid)
    with engine.client() as c:
        stream = c.stream("container.logs", id=cid, follow=True)
        followed = b"".join(item["data"] for item in stream)
    assert followed == b"line1\nline2\nline3\nline4\nline5\nlate\n"
    with engine.client() as c:
        tail = b"".join(i["data"] for i in c.stream("container.logs", id=cid, tail=2))
        assert tail == b"line5\nlate\n"
        future = b"".join(i["data"] for i in c.stream("container.logs", id=cid, since=time.time() + 60))
        assert future == b""


def test_logs_follow_right_after_start_never_misses_a_quick_exit(engine: Daemon) -> None:
    """docker-py's containers.run: start, then logs(follow) at once. A container that
    writes and exits while the log is first read must deliver its output once: its log
    file is renamed at exit, and a listing during the rename once missed it (b'') or
    took it for a new file (the line twice)."""
    for i in range(40):
        cid = engine.call("container.create", image="busybox", cmd=["echo", f"line{i}"])["Id"]
        engine.call("container.start", id=cid)
        with engine.client() as c:
            followed = b"".join(item["data"] for item in c.stream("container.logs", id=cid, follow=True))
        assert followed == f"line{i}\n".encode(), f"run {i}: {followed!r}"
        engine.call("container.remove", id=cid, force=True)


def test_exec_returns_output_and_exit_code(engine: Daemon) -> None:
    cid = engine.call("container.create", image="busybox", cmd=["sleep", "1000"], env=["FOO=bar"])["Id"]
    engine.call("container.start", id=cid)
    wait_state(engine, cid, "running")
    with engine.client() as c:
        stream = c.stream("container.exec", id=cid, cmd=["sh", "-c", "echo $FOO; pwd; exit 7"], workdir="/tmp")
        out = b"".join(i["data"] for i in stream if i["stream"] == "stdout")
        assert stream.result["ExitCode"] == 7
    assert out == b"bar\n/tmp\n"
    engine.call("container.stop", id=cid, timeout=0)
    with pytest.raises(Conflict, match="not running"):
        engine.call("container.exec", id=cid, cmd=["true"])


def test_run_options_are_applied(engine: Daemon, tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)  # the container writes as nobody
    (shared / "in.txt").write_text("from host")
    script = ("id -u; id -g; pwd; hostname; echo $GREETING; cat /data/in.txt; echo; "
              "echo written > /data/out.txt; touch /scratch/ok && echo tmpfs-ok; "
              "touch /root-write 2>/dev/null && echo rw || echo ro")
    code, out, err = run_attached(
        engine, cmd=["sh", "-c", script], user="65534:65534", workdir="/tmp", hostname="box1",
        env=["GREETING=hi"], volumes=[f"{shared}:/data"], tmpfs=["/scratch"], read_only=True,
    )
    assert code == 0, err
    assert out.decode().split("\n")[:8] == ["65534", "65534", "/tmp", "box1", "hi", "from host", "tmpfs-ok", "ro"], out
    assert (shared / "out.txt").read_text() == "written\n"


def test_command_not_found_is_127(engine: Daemon) -> None:
    with engine.client() as c:
        cid = c.call("container.create", image="busybox", cmd=["/no/such/binary"])["Id"]
        with pytest.raises(Exception) as info:
            list(c.stream("container.start", id=cid, attach=True))
    assert "no/such/binary" in str(info.value) or "not found" in str(info.value).lower() or "no such file" in str(info.value).lower()
    assert engine.call("container.inspect", id=cid)["State"]["ExitCode"] == 127


def test_memory_and_pids_limits(engine: Daemon) -> None:
    code, out, _ = run_attached(
        engine, cmd=["sh", "-c", "x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo survived"],
        memory=32 * 1024 * 1024,
    )
    assert code == 137 and b"survived" not in out
    cid = engine.call("container.create", image="busybox", cmd=["sleep", "100"], pids_limit=10)["Id"]
    engine.call("container.start", id=cid)
    wait_state(engine, cid, "running")
    with engine.client() as c:
        stream = c.stream("container.exec", id=cid, cmd=["sh", "-c", "for i in $(seq 20); do sleep 5 & done; echo done"])
        out = b"".join(i["data"] for i in stream)
    assert b"fork" in out.lower() or b"resource" in out.lower(), out


def test_oom_is_reported(engine: Daemon) -> None:
    code, _, _ = run_attached(engine, name="hog", cmd=["sh", "-c", "x=$(head -c 200000000 /dev/zero | tr '\\0' a)"],
                              memory=16 * 1024 * 1024)
    info = engine.call("container.inspect", id="hog")
    assert code == 137 and info["State"]["OOMKilled"] is True


def test_rename_prune_and_events(engine: Daemon) -> None:
    with engine.client() as c:
        events = c.stream("system.events", since=0.0, filters={"type": ["container"]})
        cid = c.call("container.create", image="busybox", name="a", cmd=["true"])["Id"]
        c.call("container.rename", id="a", name="b")
        assert c.call("container.inspect", id="b")["Id"] == cid
        with pytest.raises(NotFound):
            c.call("container.inspect", id="a")
        list(c.stream("container.start", id="b", attach=True))
        assert c.call("container.prune")["ContainersDeleted"] == [cid]
    actions = []
    with engine.client() as c2:
        for event in c2.stream("system.events", since=0.0, until=time.time(), filters={"container": [cid]}):
            actions.append(event["Action"])
    # start -a attaches first (docker's order); an attach that ends with the output is no detach
    assert actions == ["create", "rename", "attach", "start", "die", "destroy"], actions
    events.cancel()


def test_a_restarted_container_keeps_running(engine: Daemon) -> None:
    """The previous run's exit record must not end the next run."""
    cid = engine.call("container.create", image="busybox", cmd=["sleep", "1000"])["Id"]
    for _ in range(3):
        engine.call("container.start", id=cid)
        wait_state(engine, cid, "running")
        time.sleep(0.3)
        info = engine.call("container.inspect", id=cid)
        assert info["State"]["Status"] == "running", info["State"]
        engine.call("container.stop", id=cid, timeout=0)
    engine.call("container.restart", id=cid, timeout=0)
    time.sleep(0.3)
    assert engine.call("container.inspect", id=cid)["State"]["Status"] == "running"


def test_labels_are_event_attributes_and_filterable(engine: Daemon) -> None:
    # a label named like an attribute must not break event emission
    cid = engine.call("container.create", image="busybox", cmd=["true"],
                      labels={"tier": "web", "name": "label-value", "type": "x"})["Id"]
    with engine.client() as c:
        events = list(c.stream("system.events", since=0.0, until=time.time(),
                               filters={"label": ["tier=web"]}))
    assert [(e["Actor"]["ID"], e["Action"]) for e in events] == [(cid, "create")]
    attributes = events[0]["Actor"]["Attributes"]
    assert attributes["tier"] == "web" and attributes["name"] != "label-value"
