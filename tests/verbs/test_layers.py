"""diff, export and commit: the container's writable layer seen as changes, as a tar of
the whole filesystem, and as a new image that runs, pushes and pulls."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

from engine.testing.daemon import Daemon
from engine.testing.registry import registry_server
from tests.verbs.conftest import engctl, exec_out, run_detached, wait_for_processes

CHANGES = ("echo new > /added; echo extra >> /etc/passwd; rm /bin/vi; mkdir -p /d/e; "
           "rm -rf /home; mkdir /home; touch /home/fresh")


def test_diff_lists_added_changed_and_deleted(engine: Daemon) -> None:
    cid = run_detached(engine, f"{CHANGES}; sleep 1000")
    wait_for_processes(engine, cid, "sleep 1000")  # the changes are made
    lines = set(engctl(engine, "diff", cid).stdout.decode().splitlines())
    assert {"A /added", "C /etc", "C /etc/passwd", "C /bin", "D /bin/vi", "A /d", "A /d/e",
            "A /home/fresh"} <= lines
    assert not any(line.endswith(("/etc/hostname", "/etc/resolv.conf")) for line in lines)
    engctl(engine, "stop", "-t", "0", cid)
    assert set(engctl(engine, "diff", cid).stdout.decode().splitlines()) == lines
    # a container that changed nothing has no diff: not even the /etc the runtime's mount
    # points live in (as docker, whose init layer holds them)
    idle = run_detached(engine, "sleep 1000")
    exec_out(engine, idle, "true")
    assert engctl(engine, "diff", idle).stdout == b""


def test_export_is_the_container_filesystem(engine: Daemon, tmp_path: Path) -> None:
    cid = run_detached(engine, f"{CHANGES}; sleep 1000")
    wait_for_processes(engine, cid, "sleep 1000")  # the changes are made
    out = tmp_path / "fs.tar"
    engctl(engine, "export", "-o", str(out), cid)
    with tarfile.open(out) as tar:
        names = set(tar.getnames())
        added = tar.extractfile("added")
        assert added is not None and added.read() == b"new\n"
    assert {"bin/sh", "etc/passwd", "d/e", "home/fresh"} <= names
    assert "bin/vi" not in names and not any(n.startswith("/") for n in names)
    streamed = engctl(engine, "export", cid).stdout
    assert set(tarfile.open(fileobj=io.BytesIO(streamed)).getnames()) == names


def test_commit_runs_with_the_change_and_round_trips_through_a_registry(
        engine: Daemon, tmp_path: Path) -> None:
    cid = run_detached(engine, f"{CHANGES}; sleep 1000")
    wait_for_processes(engine, cid, "sleep 1000")  # the changes are made
    image_id = engctl(engine, "commit", "-m", "my message", "-a", "me <me@x>",
                      "-c", 'CMD ["cat", "/added"]', "-c", "ENV COMMITTED=yes", "-c", "WORKDIR /d",
                      "-c", "LABEL made=commit", cid, "committed:1").stdout.decode().strip()
    assert image_id.startswith("sha256:")
    # the change is there, the deletion too, and --change CMD is the new default command
    assert engctl(engine, "run", "--rm", "committed:1").stdout == b"new\n"
    out = engctl(engine, "run", "--rm", "committed:1", "sh", "-c",
                 "pwd; echo $COMMITTED; tail -1 /etc/passwd; ls /bin/vi; ls /home").stdout.decode()
    assert out.splitlines() == ["/d", "yes", "extra", "fresh"]
    inspect = engine.call("image.inspect", id="committed:1")
    assert inspect["Config"]["Cmd"] == ["cat", "/added"]
    assert inspect["Config"]["Labels"]["made"] == "commit"
    assert inspect["Author"] == "me <me@x>"
    history = engine.call("image.history", id="committed:1")
    assert any(h["Comment"] == "my message" for h in history)
    base = engine.call("image.inspect", id="busybox")
    assert len(inspect["RootFS"]["Layers"]) == len(base["RootFS"]["Layers"]) + 1
    bad = engctl(engine, "commit", "-c", "RUN echo no", cid, "x:1", check=False)
    assert bad.returncode == 125 and b"RUN" in bad.stderr
    # push, remove, pull back: the committed image still runs
    with registry_server(tmp_path) as registry:
        d2 = Daemon(extra_args=["--default-runtime", engine.runtime,  # type: ignore[attr-defined]
                                "--default-network", "none", "--insecure-registry", registry.host])
        d2.start()
        try:
            ref = f"{registry.host}/verbs/committed:1"
            d2.call("image.load", path=str(engine_archive(engine, tmp_path)))
            engctl(d2, "tag", "committed:1", ref)
            engctl(d2, "push", ref)
            engctl(d2, "rmi", ref, "committed:1")
            engctl(d2, "pull", ref)
            assert engctl(d2, "run", "--rm", ref).stdout == b"new\n"
        finally:
            d2.cleanup()


def engine_archive(engine: Daemon, tmp_path: Path) -> Path:
    """The committed image saved from ``engine`` (docker save), to load elsewhere."""
    path = tmp_path / "committed.tar"
    engctl(engine, "save", "-o", str(path), "committed:1")
    return path


def test_commit_leaves_out_the_empty_mount_targets_the_runtime_made(engine: Daemon) -> None:
    """The image lacks /etc/hosts, /etc/hostname, /etc/resolv.conf: the runtime's empty
    mount targets are not the container's change and stay out of the committed layer (as
    docker's commit leaves them out); a file the container wrote is kept."""
    cid = run_detached(engine, "echo mine > /mine; sleep 1000")
    engctl(engine, "commit", cid, "targets:1")
    inspect = engine.call("image.inspect", id="targets:1")
    top = inspect["RootFS"]["Layers"][-1].split(":", 1)[1]
    blob = next(engine.root.rglob(top))
    with tarfile.open(blob) as tar:
        names = {m.name.lstrip("./") for m in tar.getmembers()}
    assert "mine" in names, names
    assert not names & {"etc/hosts", "etc/hostname", "etc/resolv.conf"}, names
    engctl(engine, "rm", "-f", cid)
