"""Named and anonymous volumes with real runc, conmon and mounts: data outlives containers and
the daemon (SIGKILL included), new volumes are seeded from the image, `:ro` holds, a volume
in use cannot be removed, prune takes only what nobody uses."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from engine.errors import Conflict, InvalidArgument, NotFound
from engine.testing.daemon import Daemon
from engine.testing.procs import wait_until

from .conftest import SEEDED, run, start_engine


def names(d: Daemon, **filters: list[str]) -> set[str]:
    return {v["Name"] for v in d.call("volume.list", filters=filters)["Volumes"]}


def mounted(path: Path) -> bool:
    return any(line.split(" ")[4] == str(path) for line in Path("/proc/self/mountinfo").read_text().splitlines())


def test_named_volume_outlives_containers_and_a_daemon_sigkill(images_archive: Path) -> None:
    d = start_engine(images_archive)
    try:
        # first use: seeded from the image, owners and modes kept
        code, out, err, first = run(d, SEEDED, name="writer", volumes=["vol1:/data"], cmd=[
            "sh", "-c", "cat /data/hello /data/sub/deep; stat -c '%u:%g %a' /data /data/hello /data/sub;"
                        " echo written > /data/new"])
        assert code == 0, err
        assert out.decode().splitlines() == [
            "from the image", "deep", "1234:2345 750", "1234:2345 640", "1234:2345 700"]
        assert d.call("volume.inspect", name="vol1")["Driver"] == "local"
        info = d.call("container.inspect", id=first)
        [mount] = [m for m in info["Mounts"] if m["Type"] == "volume" and m["Name"] == "vol1"]
        assert mount["Destination"] == "/data" and mount["RW"] and mount["Source"].endswith("/vol1/_data")

        # the next container reads it; :ro holds
        code, out, err, _ = run(d, "busybox", volumes=["vol1:/data:ro"], cmd=[
            "sh", "-c", "cat /data/new; echo x > /data/other && echo WROTE || echo refused"])
        assert code == 0, err
        assert out == b"written\nrefused\n"

        # in use (by any container that names it): no removal, force or not
        with pytest.raises(Conflict, match="in use"):
            d.call("volume.remove", name="vol1")
        with pytest.raises(Conflict):
            d.call("volume.remove", name="vol1", force=True)

        d.kill9()
        d.start()
        assert "vol1" in names(d)
        code, out, err, _ = run(d, "busybox", volumes=["vol1:/data"], cmd=["cat", "/data/new", "/data/hello"])
        assert (code, out) == (0, b"written\nfrom the image\n"), err
        # an emptied volume is not seeded again from an image without content there
        code, out, _, _ = run(d, "busybox", volumes=["vol2:/data"], cmd=["ls", "-A", "/data"])
        assert (code, out) == (0, b"")
    finally:
        d.cleanup()


def test_anonymous_volumes_image_volume_and_rm_v(engine: Daemon) -> None:
    d = engine
    code, out, err, cid = run(d, SEEDED, volumes=["/scratch"], cmd=["sh", "-c", "cat /anon/seed; touch /scratch/x"])
    assert code == 0, err
    assert out == b"anon seed\n"  # VOLUME /anon: an anonymous volume, seeded
    anon = [m for m in d.call("container.inspect", id=cid)["Mounts"] if m["Type"] == "volume"]
    assert sorted(m["Destination"] for m in anon) == ["/anon", "/scratch"]
    assert all(m["Anonymous"] and len(m["Name"]) == 64 for m in anon)
    assert {m["Name"] for m in anon} <= names(d)
    # rm without -v keeps them, rm -v removes them
    _, _, _, other = run(d, SEEDED, cmd=["true"])
    other_anon = {m["Name"] for m in d.call("container.inspect", id=other)["Mounts"] if m["Type"] == "volume"}
    d.call("container.remove", id=other)
    assert other_anon <= names(d)
    d.call("container.remove", id=cid, volumes=True)
    assert not ({m["Name"] for m in anon} & names(d))
    # --rm removes them too
    code, _, _, rm_id = run(d, SEEDED, auto_remove=True, cmd=["true"])
    assert code == 0
    # the run answers once the container is gone; its volumes are removed just after
    assert wait_until(lambda: names(d) == other_anon, 10), (names(d), other_anon)


def test_nested_volumes_and_nocopy(engine: Daemon) -> None:
    d = engine
    code, out, err, _ = run(d, SEEDED, volumes=["inner:/data/sub", "outer:/data"], cmd=[
        "sh", "-c", "echo nested > /data/sub/f; ls /data"])
    assert code == 0, err
    assert out == b"hello\nsub\n"  # outer first (seeded), inner over its sub/ (seeded too)
    code, out, err, _ = run(d, "busybox", volumes=["inner:/x"], cmd=["ls", "/x"])
    assert out == b"deep\nf\n", err
    code, out, err, _ = run(d, SEEDED, mounts=["type=volume,src=bare,dst=/data,volume-nocopy"], cmd=["ls", "-A", "/data"])
    assert (code, out) == (0, b""), err


def test_prune_removes_only_unused_volumes(engine: Daemon) -> None:
    d = engine
    d.call("volume.create", name="used-named", labels={"keep": "yes"})
    d.call("volume.create", name="unused-named", labels={"keep": "no"})
    d.call("volume.create", name="unused-labelled", labels={"tier": "cache"})
    run(d, "busybox", name="user", volumes=["used-named:/v"], cmd=["true"])
    _, _, _, anon_user = run(d, "busybox", volumes=["/a"], cmd=["true"])
    run(d, "busybox", name="gone", volumes=["/b"], cmd=["true"])
    orphan = {m["Name"] for m in d.call("container.inspect", id="gone")["Mounts"]}
    d.call("container.remove", id="gone")  # without -v: its anonymous volume is unused now
    kept_anon = {m["Name"] for m in d.call("container.inspect", id=anon_user)["Mounts"]}

    assert names(d, dangling=["true"]) == orphan | {"unused-named", "unused-labelled"}
    assert names(d, label=["keep=yes"]) == {"used-named"}
    assert names(d, name=["unused"]) == {"unused-named", "unused-labelled"}

    result = d.call("volume.prune")  # docker 23+: anonymous ones only
    assert set(result["VolumesDeleted"]) == orphan
    result = d.call("volume.prune", all=True, filters={"label": ["tier=cache"]})
    assert result["VolumesDeleted"] == ["unused-labelled"]
    result = d.call("volume.prune", all=True)
    assert result["VolumesDeleted"] == ["unused-named"]
    assert names(d) == {"used-named"} | kept_anon
    with pytest.raises(NotFound):
        d.call("volume.inspect", name="unused-named")


def test_mount_flag_local_tmpfs_volume_and_volumes_from(engine: Daemon, tmp_path: Path) -> None:
    d = engine
    created = d.call("volume.create", name="fast", options={"type": "tmpfs", "device": "tmpfs", "o": "size=2m"})
    data = Path(created["Mountpoint"])
    assert not mounted(data)  # mounted only while a running container needs it
    d.call("container.create", image="busybox", name="holder", cmd=["sleep", "60"],
           mounts=["type=volume,src=fast,dst=/fast", "type=tmpfs,dst=/scratch,tmpfs-size=1m",
                   f"type=bind,src={tmp_path},dst=/host,readonly"])
    d.call("container.start", id="holder")
    try:
        assert mounted(data)
        code, out, err, _ = run(d, "busybox", volumes_from=["holder:ro"], cmd=[
            "sh", "-c", "df -k /fast | tail -1; touch /fast/x 2>/dev/null && echo WROTE || echo refused"])
        assert code == 0, err
        fields = out.decode().splitlines()
        assert fields[0].split()[1] == "2048" and fields[1] == "refused"
        assert mounted(data), "a running container still needs it"
        mounts = {m["Destination"]: m for m in d.call("container.inspect", id="holder")["Mounts"]}
        assert mounts["/fast"]["Name"] == "fast" and mounts["/scratch"]["Type"] == "tmpfs"
        assert mounts["/host"]["Type"] == "bind" and not mounts["/host"]["RW"]
        # one mount and unmount per container (the holder, and the one with --volumes-from,
        # whose removal frees its mounts just after the run has answered)
        deadline = time.monotonic() + 10
        while True:
            with d.client() as c:
                stream = c.stream("system.events", {"since": 0, "until": time.time(),
                                                    "filters": {"type": ["volume"]}})
                actions = [a for a, name in ((e["Action"], e["Actor"]["ID"]) for e in stream) if name == "fast"]
            if len(actions) >= 4 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert actions == ["create", "mount", "mount", "unmount"]
        # a daemon SIGKILL and restart: the volume stays mounted for the running holder,
        # and the new daemon unmounts it when the holder stops
        d.kill9()
        assert mounted(data)
        d.start()
    finally:
        d.call("container.stop", id="holder", timeout=0)
    deadline = time.monotonic() + 10
    while mounted(data):
        assert time.monotonic() < deadline, "still mounted after its last user stopped"
        time.sleep(0.05)

    def fast_actions() -> list[str]:
        with d.client() as c:
            stream = c.stream("system.events", {"since": 0, "until": time.time(), "filters": {"type": ["volume"]}})
            return [e["Action"] for e in stream if e["Actor"]["ID"] == "fast"]

    # the events since the restart: the holder's unmount (told just after the unmount itself)
    wait_until(lambda: fast_actions() != [], 10)
    assert fast_actions() == ["unmount"]


def test_local_bind_volume_of_a_host_path(engine: Daemon, tmp_path: Path) -> None:
    d = engine
    host = tmp_path / "device"
    host.mkdir()
    (host / "from-host").write_text("host data\n")
    created = d.call("volume.create", name="bound", options={"type": "none", "o": "bind", "device": str(host)})
    data = Path(created["Mountpoint"])
    code, out, err, _ = run(d, "busybox", volumes=["bound:/b"], cmd=["sh", "-c", "cat /b/from-host; echo back > /b/new"])
    assert (code, out) == (0, b"host data\n"), err
    assert (host / "new").read_text() == "back\n"
    deadline = time.monotonic() + 10
    while mounted(data):  # the exit is told first, the release follows
        assert time.monotonic() < deadline, "still mounted after its container ended"
        time.sleep(0.05)
    d.call("container.prune")
    d.call("volume.remove", name="bound")
    assert (host / "from-host").exists() and (host / "new").exists()


def test_bad_volume_requests_are_refused_and_lose_nothing(engine: Daemon) -> None:
    d = engine
    for params in (
        {"volumes": ["bad name:/x"]},
        {"volumes": ["vol:relative"]},
        {"mounts": ["type=volume,src=v"]},
        {"mounts": ["type=floppy,dst=/x"]},
        {"mounts": ["type=volume,dst=/x,volume-opt=bogus=1"]},
        {"volumes": ["a:/same", "b:/same"]},
    ):
        with pytest.raises(InvalidArgument):
            d.call("container.create", image="busybox", cmd=["true"], **params)
    with pytest.raises(InvalidArgument, match="does not take"):
        d.call("volume.create", name="odd", options={"colour": "blue"})
    with pytest.raises(NotFound, match="not installed"):
        d.call("volume.create", name="odd", driver="nonesuch")
    assert names(d) == set()
    assert d.call("container.list", all=True) == []
