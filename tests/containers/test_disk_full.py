"""A full disk (issue 16.9), with a real engined whose --root is a size-limited tmpfs: create,
rename, tag and load answer resource_exhausted naming the path, and each change is applied
whole or not at all; once there is space again, everything works."""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from engine.errors import EngineError, ResourceExhausted, Unavailable
from engine.testing.daemon import Daemon, require, require_binary
from engine.testing.images import TestImage, busybox_image, write_docker_archive


def big_layer(size: int) -> bytes:
    """A layer tar holding one incompressible file of ``size`` bytes."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("blob")
        info.size = size
        tar.addfile(info, io.BytesIO(os.urandom(size)))
    return buf.getvalue()


def fill(path: Path) -> None:
    """Write ``path`` until the filesystem is full, to the last page."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for size in (1 << 20, 4096, 1):
            chunk = b"\0" * size
            try:
                while True:
                    os.write(fd, chunk)
            except OSError:
                pass
    finally:
        os.close(fd)


@pytest.fixture
def full_disk_engine() -> Iterator[tuple[Daemon, Path]]:
    require(os.geteuid() == 0, "mounting a tmpfs needs root")
    runtime = require_binary("crun")
    require_binary("conmon")
    base = Path(tempfile.mkdtemp(prefix="eng-full-"))
    root = base / "root"
    root.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=128m", "tmpfs", str(root)], check=True)
    d = Daemon(base, extra_args=["--default-runtime", os.path.basename(runtime),
                                 "--default-network", "none"])
    try:
        d.start()
        archive = base / "busybox.tar"
        write_docker_archive(archive, [busybox_image()])
        d.call("image.load", path=str(archive))
        yield d, root / "filler"
    finally:
        (root / "filler").unlink(missing_ok=True)
        d.remove_all_containers()
        d.stop()
        subprocess.run(["umount", "-l", str(root)], capture_output=True)
        d.cleanup()


def when_up(c: Any, method: str, **params: Any) -> Any:
    """A call to a container whose actor a failed write restarted, once it is back (the
    supervisor restarts it from disk after a backoff)."""
    deadline = time.monotonic() + 20
    while True:
        try:
            return c.call(method, params)
        except Unavailable:
            assert time.monotonic() < deadline, f"{method} {params}: the container did not come back"
            time.sleep(0.1)


def assert_disk_full(e: EngineError) -> None:
    assert isinstance(e, ResourceExhausted), f"{type(e).__name__}: {e}"
    assert "no space left on device" in e.message and "internal error" not in e.message
    assert "corrupt" not in e.message


def test_a_full_disk_is_resource_exhausted_and_changes_are_whole(
        full_disk_engine: tuple[Daemon, Path]) -> None:
    d, filler = full_disk_engine
    archive = filler.parent.parent / "big.tar"  # outside the full filesystem
    write_docker_archive(archive, [TestImage(name="localhost/test/big:latest",
                                             layers=[big_layer(20 << 20)])])
    with d.client() as c:
        cid = c.call("container.create", image="busybox", name="old")["Id"]
        fill(filler)

        with pytest.raises(EngineError) as caught:
            c.call("container.create", image="busybox", name="second")
        assert_disk_full(caught.value)
        assert caught.value.details.get("path", "").startswith(str(d.root))
        assert [x["Names"] for x in c.call("container.list", all=True)] == [["old"]]

        try:
            c.call("container.rename", id="old", name="new")
            renamed = True
        except EngineError as e:
            assert_disk_full(e)
            renamed = False
        name = "new" if renamed else "old"
        other = "old" if renamed else "new"
        assert when_up(c, "container.inspect", id=name)["Name"] == f"/{name}"
        assert c.call("container.inspect", id=cid)["Name"] == f"/{name}"
        assert [x["Names"] for x in c.call("container.list", all=True)] == [[name]]
        with pytest.raises(EngineError, match="(?i)no such container"):
            c.call("container.inspect", id=other)

        try:
            c.call("image.tag", source="busybox", target="busybox:two")
            tagged = True
        except EngineError as e:
            assert_disk_full(e)
            tagged = False
        tags = {t for img in c.call("image.list") for t in img["RepoTags"]}
        assert ("docker.io/library/busybox:two" in tags or "busybox:two" in tags) == tagged

        with pytest.raises(EngineError) as caught:
            c.call("image.load", path=str(archive))
        assert_disk_full(caught.value)
        assert not any("big" in t for img in c.call("image.list") for t in img["RepoTags"])

        # space again: every operation works, nothing half-done is in the way
        filler.unlink()
        c.call("container.create", image="busybox", name="second")
        when_up(c, "container.rename", id=cid, name="third")
        assert c.call("container.inspect", id="third")["Id"] == cid
        c.call("image.tag", source="busybox", target="busybox:three")
        loaded = c.call("image.load", path=str(archive))
        assert loaded
        assert c.call("system.ping") == "pong"
        # a write the disk refused is the host's trouble, not a bug: no actor crashed
        crashes = list(c.stream("system.events", since=0, until=time.time(),
                                filters={"event": ["actor_crash"]}))
        assert crashes == []


def last_number(c: Any, cid: str) -> int:
    items = list(c.stream("container.logs", id=cid, tail=1))
    text = b"".join(i["data"] for i in items).decode().strip()
    return int(text.split()[-1]) if text else -1


def test_a_container_logging_into_a_full_disk(full_disk_engine: tuple[Daemon, Path]) -> None:
    """The container keeps running while its output has nowhere to go, the daemon keeps
    serving, and once there is space the log goes on; the container stops and is removed
    as usual."""
    d, filler = full_disk_engine
    with d.client() as c:
        cid = c.call("container.run", image="busybox", detach=True, log_opts={"max-size": "-1"},
                     cmd=["sh", "-c", "i=0; while :; do echo line $i; i=$((i+1)); usleep 2000; done"])["Id"]
        deadline = time.monotonic() + 20
        while last_number(c, cid) < 10:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        fill(filler)
        time.sleep(2)  # the container writes into a full disk meanwhile
        assert c.call("system.ping") == "pong"
        assert c.call("container.inspect", id=cid)["State"]["Status"] == "running"
        stuck = last_number(c, cid)
        assert stuck >= 10  # what was written before is still readable
        filler.unlink()
        deadline = time.monotonic() + 20
        while last_number(c, cid) <= stuck:
            assert time.monotonic() < deadline, "the log did not go on once there was space"
            time.sleep(0.1)
        c.call("container.stop", id=cid, timeout=1)
        c.call("container.remove", id=cid)
        assert c.call("container.list", all=True) == []
