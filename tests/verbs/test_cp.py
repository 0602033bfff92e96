"""engctl cp and the container.copy_* RPCs: both directions, running and stopped
containers, tar streams, and containers whose symlinks point at / and ../../.. — the engine
must resolve them inside the container and never read or write the host's files."""

from __future__ import annotations

import io
import os
import secrets
import subprocess
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.testing.daemon import Daemon, mounts_under, processes_mentioning
from tests.verbs.conftest import ENGCTL, engctl, exec_out, run_detached, wait_for_processes

LINKS = "ln -s / /rootlink; ln -s ../../.. /uplink; mkdir -p /deep/a/b; ln -s ../../../../.. /deep/a/b/up"


@pytest.fixture
def sentinel() -> Iterator[str]:
    """A name under the host's /tmp: the host file must never be read or replaced, and
    nothing of that name created on the host by a copy into a container."""
    name = f"verbs-sentinel-{secrets.token_hex(6)}"
    host = Path("/tmp") / name
    host.write_text("HOST SECRET")
    try:
        yield name
    finally:
        host.unlink(missing_ok=True)
        for extra in Path("/tmp").glob(f"{name}*"):
            extra.unlink()


def tar_bytes(members: list[tuple[str, bytes, int, int]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data, mode, uid in members:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.uid, info.gid = len(data), mode, uid, uid
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def untar(data: bytes) -> dict[str, tarfile.TarInfo | bytes]:
    out: dict[str, tarfile.TarInfo | bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for member in tar:
            out[member.name] = member
            if member.isreg():
                f = tar.extractfile(member)
                assert f is not None
                out[member.name + ":data"] = f.read()
    return out


@pytest.mark.parametrize("link", ["/rootlink", "/uplink", "/deep/a/b/up"])
def test_copy_out_through_escaping_symlinks_reads_the_container(engine: Daemon, sentinel: str,
                                                                 link: str) -> None:
    cid = run_detached(engine, f"{LINKS}; echo CTR > /tmp/{sentinel}; sleep 1000")
    wait_for_processes(engine, cid, "sleep 1000")  # the script ran up to its sleep
    out = engctl(engine, "cp", f"{cid}:{link}/tmp/{sentinel}", "-").stdout
    files = untar(out)
    assert files[f"{sentinel}:data"] == b"CTR\n"
    # -L on the link itself: the container's root, not the host's
    listing = untar(engctl(engine, "cp", "-L", f"{cid}:{link}", "-").stdout)
    assert any(name.endswith(f"tmp/{sentinel}") for name in listing)
    assert (Path("/tmp") / sentinel).read_text() == "HOST SECRET"


@pytest.mark.parametrize("running", [True, False])
@pytest.mark.parametrize("link", ["/rootlink", "/uplink"])
def test_copy_in_through_escaping_symlinks_writes_the_container(engine: Daemon, sentinel: str,
                                                                link: str, running: bool) -> None:
    cid = run_detached(engine, f"{LINKS}; sleep 1000")
    wait_for_processes(engine, cid, "sleep 1000")
    if not running:
        engctl(engine, "stop", "-t", "0", cid)
    # a tar stream whose entry replaces the sentinel, and a new file beside it
    archive = tar_bytes([(sentinel, b"FROM TAR", 0o640, 0), (f"{sentinel}-new", b"NEW", 0o600, 0)])
    engctl(engine, "cp", "-", f"{cid}:{link}/tmp", input=archive)
    # an archive that itself holds an escaping symlink and then writes through it
    evil = io.BytesIO()
    with tarfile.open(fileobj=evil, mode="w") as tar:
        info = tarfile.TarInfo("esc")
        info.type, info.linkname = tarfile.SYMTYPE, "../../../../../../tmp"
        tar.addfile(info)
        info = tarfile.TarInfo(f"esc/{sentinel}-via-link")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"EVIL"))
    engctl(engine, "cp", "-", f"{cid}:/", input=evil.getvalue())
    assert (Path("/tmp") / sentinel).read_text() == "HOST SECRET"
    assert not (Path("/tmp") / f"{sentinel}-new").exists()
    assert not (Path("/tmp") / f"{sentinel}-via-link").exists()
    if not running:
        engctl(engine, "start", cid)
    assert exec_out(engine, cid, "cat", f"/tmp/{sentinel}", f"/tmp/{sentinel}-new",
                    f"/tmp/{sentinel}-via-link") == (0, b"FROM TARNEWEVIL")
    code, listing = exec_out(engine, cid, "stat", "-c", "%a %u", f"/tmp/{sentinel}")
    assert listing.split() == [b"640", b"0"]


def test_copy_both_ways_with_files_keeps_modes_and_owners(engine: Daemon, tmp_path: Path) -> None:
    cid = run_detached(engine, "mkdir -p /data/sub; echo one > /data/one; echo two > /data/sub/two; "
                       "chmod 751 /data/sub; chown 1234:99 /data/one; chmod 4755 /data/one; "
                       "ln -s one /data/link; sleep 1000")
    wait_for_processes(engine, cid, "sleep 1000")
    # out: into an existing directory, and as a new name
    engctl(engine, "cp", "-a", f"{cid}:/data", str(tmp_path))
    assert (tmp_path / "data" / "sub" / "two").read_text() == "two\n"
    assert (tmp_path / "data" / "link").is_symlink() and os.readlink(tmp_path / "data" / "link") == "one"
    st = (tmp_path / "data" / "one").stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (1234, 99, 0o4755)
    assert (tmp_path / "data" / "sub").stat().st_mode & 0o777 == 0o751
    engctl(engine, "cp", f"{cid}:/data/one", str(tmp_path / "renamed"))
    assert (tmp_path / "renamed").read_text() == "one\n"
    assert (tmp_path / "renamed").stat().st_uid == os.getuid()  # without -a: ours
    engctl(engine, "cp", f"{cid}:/data/.", str(tmp_path / "contents"))
    assert sorted(p.name for p in (tmp_path / "contents").iterdir()) == ["link", "one", "sub"]
    # in: a host directory, a file under a new name; -a keeps the owners
    src = tmp_path / "src"
    (src / "inner").mkdir(parents=True)
    (src / "inner" / "f").write_text("host file")
    os.chmod(src / "inner" / "f", 0o604)
    os.chown(src / "inner" / "f", 4321, 4321)
    engctl(engine, "cp", "-a", str(src), f"{cid}:/")
    engctl(engine, "cp", str(src / "inner" / "f"), f"{cid}:/etc/copied")
    code, out = exec_out(engine, cid, "sh", "-c", "cat /src/inner/f; echo; stat -c '%a %u' /src/inner/f /etc/copied")
    assert out.decode().split("\n") == ["host file", "604 4321", "604 0", ""]
    engctl(engine, "stop", "-t", "0", cid)
    # a stopped container: out and in both work
    engctl(engine, "cp", str(src / "inner" / "f"), f"{cid}:/stopped-copy")
    out = engctl(engine, "cp", f"{cid}:/stopped-copy", "-").stdout
    assert untar(out)["stopped-copy:data"] == b"host file"


def test_copy_errors_are_clear(engine: Daemon, tmp_path: Path) -> None:
    cid = run_detached(engine, "sleep 1000")
    missing = engctl(engine, "cp", f"{cid}:/no/such/file", str(tmp_path), check=False)
    assert missing.returncode != 0 and b"no such file or directory" in missing.stderr
    both = engctl(engine, "cp", str(tmp_path), str(tmp_path), check=False)
    assert both.returncode == 125 and b"one side in a container" in both.stderr
    bad = engctl(engine, "cp", "-", f"{cid}:/tmp", input=b"not a tar at all" * 100, check=False)
    assert bad.returncode != 0 and b"tar" in bad.stderr
    assert exec_out(engine, cid, "true")[0] == 0  # the daemon and container are fine


def test_copy_sees_the_running_containers_volumes_and_binds(engine: Daemon, tmp_path: Path) -> None:
    """docker cp shows what the container sees: a named volume's and a bind mount's files
    come out, and files copied in land in the volume and on the bind's host directory."""
    bind = tmp_path / "bind"
    bind.mkdir()
    (bind / "from-host").write_text("host side\n")
    cid = run_detached(engine, "echo in-volume > /vol/made-inside; sleep 1000",
                       volumes=["cpvol:/vol", f"{bind}:/bound"])
    try:
        wait_for_processes(engine, cid, "sleep 1000")
        out = untar(engctl(engine, "cp", f"{cid}:/vol/made-inside", "-").stdout)
        assert out["made-inside:data"] == b"in-volume\n"
        out = untar(engctl(engine, "cp", f"{cid}:/bound/from-host", "-").stdout)
        assert out["from-host:data"] == b"host side\n"
        (tmp_path / "upload").write_text("copied in\n")
        engctl(engine, "cp", str(tmp_path / "upload"), f"{cid}:/bound/uploaded")
        assert (bind / "uploaded").read_text() == "copied in\n"
        engctl(engine, "cp", str(tmp_path / "upload"), f"{cid}:/vol/uploaded")
        engctl(engine, "rm", "-f", cid)
        code, out_bytes = exec_out(engine, run_detached(engine, "sleep 1000", volumes=["cpvol:/v"]), "cat", "/v/uploaded")
        assert (code, out_bytes) == (0, b"copied in\n")
    finally:
        with engine.client() as c:
            for container in c.call("container.list", all=True):
                c.call("container.remove", id=container["Id"], force=True)
            c.call("volume.remove", name="cpvol", force=True)


# --- a stopped container's volumes and binds (docker mounts them for the copy) ---------------


def copy_helpers(engine: Daemon) -> list[int]:
    """The daemon's mount helpers for copies of stopped containers (engine.actors.copy_view)."""
    daemon_pid = engine.proc.pid if engine.proc else 0
    found = []
    for pid in processes_mentioning("copy_mounts_helper"):
        try:
            ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == daemon_pid:
            found.append(pid)
    return found


def wait_helpers_gone(engine: Daemon) -> None:
    deadline = time.monotonic() + 10
    while copy_helpers(engine):
        assert time.monotonic() < deadline, f"copy mount helpers left: {copy_helpers(engine)}"
        time.sleep(0.1)


def wait_unmounted(engine: Daemon, path: Path) -> None:
    """The release of a copy's root follows its reply (a notice to the actor): wait for it."""
    deadline = time.monotonic() + 10
    while str(path) in mounts_under(engine.base):
        assert time.monotonic() < deadline, f"{path} is still mounted"
        time.sleep(0.1)


def volume_dir(engine: Daemon, name: str) -> Path:
    with engine.client() as c:
        return Path(c.call("volume.inspect", name=name)["Mountpoint"])


def remove_everything(engine: Daemon, volumes: list[str]) -> None:
    with engine.client() as c:
        for container in c.call("container.list", all=True):
            c.call("container.remove", id=container["Id"], force=True)
        for name in volumes:
            try:
                c.call("volume.remove", name=name, force=True)
            except Exception:  # noqa: BLE001 - not made by a test that failed early
                pass


def test_copy_sees_a_stopped_containers_volumes_binds_and_nested_volumes(engine: Daemon, tmp_path: Path) -> None:
    """docker cp of a stopped container shows its volumes and binds (nested ones in order)
    and writes into them, not into the container's layer; nothing stays mounted, and a
    start afterwards sees what was copied in."""
    bind = tmp_path / "bind"
    bind.mkdir()
    (bind / "from-host").write_text("host side\n")
    outer, inner = f"cpo-{secrets.token_hex(4)}", f"cpi-{secrets.token_hex(4)}"
    script = ("cat /vol/uploaded /vol/nested/deep /bound/uploaded > /bound/seen 2>&1; "
              "echo in-volume > /vol/made-inside; echo in-nested > /vol/nested/made")
    cid = run_detached(engine, script, volumes=[f"{outer}:/vol", f"{inner}:/vol/nested", f"{bind}:/bound"])
    try:
        engctl(engine, "wait", cid)
        assert untar(engctl(engine, "cp", f"{cid}:/vol/made-inside", "-").stdout)["made-inside:data"] == b"in-volume\n"
        assert untar(engctl(engine, "cp", f"{cid}:/vol/nested/made", "-").stdout)["made:data"] == b"in-nested\n"
        assert untar(engctl(engine, "cp", f"{cid}:/bound/from-host", "-").stdout)["from-host:data"] == b"host side\n"
        listing = untar(engctl(engine, "cp", f"{cid}:/vol", "-").stdout)
        assert {"vol/made-inside", "vol/nested/made"} <= set(listing)
        (tmp_path / "upload").write_text("copied in\n")
        engctl(engine, "cp", str(tmp_path / "upload"), f"{cid}:/vol/uploaded")
        engctl(engine, "cp", str(tmp_path / "upload"), f"{cid}:/vol/nested/deep")
        engctl(engine, "cp", str(tmp_path / "upload"), f"{cid}:/bound/uploaded")
        # on the volumes' and the bind's host directories, not in the container's layer
        assert (volume_dir(engine, outer) / "uploaded").read_text() == "copied in\n"
        assert (volume_dir(engine, inner) / "deep").read_text() == "copied in\n"
        assert (bind / "uploaded").read_text() == "copied in\n"
        with engine.client() as c:
            changes = {ch["Path"] for ch in c.call("container.diff", id=cid)}
        assert not {"/vol/uploaded", "/vol/nested/deep", "/bound/uploaded"} & changes
        wait_helpers_gone(engine)
        assert not [m for m in mounts_under(engine.base) if m.endswith(("/vol", "/vol/nested", "/bound"))]
        engctl(engine, "start", cid)
        engctl(engine, "wait", cid)
        assert (bind / "seen").read_text() == "copied in\n" * 3
    finally:
        remove_everything(engine, [outer, inner])


def test_copy_into_a_created_containers_volume_then_start(engine: Daemon, tmp_path: Path) -> None:
    """A container created and never started: a copy into its named volume lands there
    (the mount point made in its root as the runtime would), and its first run sees it."""
    name = f"cpc-{secrets.token_hex(4)}"
    readonly = tmp_path / "ro"
    readonly.mkdir()
    with engine.client() as c:
        cid = str(c.call("container.create", {"image": "busybox", "cmd": ["cat", "/fresh/dir/file"],
                                              "volumes": [f"{name}:/fresh/dir", f"{readonly}:/ro:ro"]})["Id"])
    try:
        (tmp_path / "file").write_text("before the first start\n")
        engctl(engine, "cp", str(tmp_path / "file"), f"{cid}:/fresh/dir/")
        assert (volume_dir(engine, name) / "file").read_text() == "before the first start\n"
        # a read-only bind stays read-only for the copy too (docker refuses it as well)
        refused = engctl(engine, "cp", str(tmp_path / "file"), f"{cid}:/ro/file", check=False)
        assert refused.returncode != 0 and b"read-only" in refused.stderr.lower(), refused.stderr
        assert list(readonly.iterdir()) == []
        wait_helpers_gone(engine)
        engctl(engine, "start", cid)
        assert engctl(engine, "wait", cid).stdout.strip() == b"0"
        assert engctl(engine, "logs", cid).stdout == b"before the first start\n"
    finally:
        remove_everything(engine, [name])


def test_a_symlink_at_a_volumes_destination_resolves_inside_the_root(engine: Daemon, sentinel: str,
                                                                     tmp_path: Path) -> None:
    """An image whose path at a volume's destination is a symlink to a host path: the copy's
    mount goes where the link leads inside the container, never over the host's file."""
    image = f"cplink{secrets.token_hex(3)}:1"
    maker = run_detached(engine, f"ln -s /tmp/{sentinel} /data; ln -s ../../../../tmp/{sentinel}-rel /reldata")
    name = f"cpl-{secrets.token_hex(4)}"
    try:
        engctl(engine, "wait", maker)
        engctl(engine, "commit", maker, image)
        with engine.client() as c:
            cid = str(c.call("container.create", {"image": image, "cmd": ["true"],
                                                  "volumes": [f"{name}:/data", f"{name}:/reldata"]})["Id"])
        (tmp_path / "upload").write_text("into the volume\n")
        engctl(engine, "cp", str(tmp_path / "upload"), f"{cid}:/data/upload")
        assert (volume_dir(engine, name) / "upload").read_text() == "into the volume\n"
        out = untar(engctl(engine, "cp", f"{cid}:/reldata/upload", "-").stdout)
        assert out["upload:data"] == b"into the volume\n"
        assert (Path("/tmp") / sentinel).read_text() == "HOST SECRET"
        assert not (Path("/tmp") / f"{sentinel}-rel").exists()
        assert not [m for m in mounts_under(Path("/tmp")) if sentinel in m]
        wait_helpers_gone(engine)
    finally:
        remove_everything(engine, [name])
        engctl(engine, "rmi", image, check=False)


def test_a_failed_copy_of_a_stopped_container_leaves_no_mount(engine: Daemon, tmp_path: Path) -> None:
    """A copy that fails (a missing path; a mount point the helper cannot make) leaves no
    helper and no mount: a tmpfs volume's host mount (counted per user) is released too."""
    name = f"cpt-{secrets.token_hex(4)}"
    engctl(engine, "volume", "create", "--opt", "type=tmpfs", "--opt", "device=tmpfs", name)
    data = volume_dir(engine, name)
    try:
        cid = run_detached(engine, "true", volumes=[f"{name}:/vol"])
        engctl(engine, "wait", cid)
        wait_unmounted(engine, data)
        (tmp_path / "f").write_text("x")
        engctl(engine, "cp", str(tmp_path / "f"), f"{cid}:/vol/f")
        wait_helpers_gone(engine)
        wait_unmounted(engine, data)  # mounted for the copy only
        missing = engctl(engine, "cp", f"{cid}:/vol/no-such", "-", check=False)
        assert missing.returncode != 0 and b"no such file or directory" in missing.stderr
        wait_helpers_gone(engine)
        wait_unmounted(engine, data)
        # /etc/passwd is a file in busybox: no mount point can be made below it
        with engine.client() as c:
            bad = str(c.call("container.create", {"image": "busybox", "cmd": ["true"],
                                                  "volumes": [f"{name}:/vol", f"{tmp_path}:/etc/passwd/x"]})["Id"])
        refused = engctl(engine, "cp", f"{bad}:/vol", "-", check=False)
        assert refused.returncode != 0 and b"/etc/passwd/x" in refused.stderr, refused.stderr
        wait_helpers_gone(engine)
        wait_unmounted(engine, data)
        assert untar(engctl(engine, "cp", f"{cid}:/etc/hostname", "-").stdout)  # the daemon is fine
    finally:
        remove_everything(engine, [name])


def test_start_during_a_long_copy_of_a_stopped_container(engine: Daemon, tmp_path: Path) -> None:
    """A start while a copy out of the stopped container's volume streams (the client
    reads slowly): the start waits for the copy's end (docker holds the container's lock for
    a whole cp), the copy finishes whole, and the run sees the volume."""
    name = f"cps-{secrets.token_hex(4)}"
    cid = run_detached(engine, "[ -e /vol/big ] && wc -c < /vol/big > /vol/seen; "
                       "[ -e /vol/big ] || dd if=/dev/zero of=/vol/big bs=1M count=32 2>/dev/null",
                       volumes=[f"{name}:/vol"])
    try:
        engctl(engine, "wait", cid)
        env = {**os.environ, "ENGINE_HOST": engine.host}
        copy = subprocess.Popen([*ENGCTL, "cp", f"{cid}:/vol/big", "-"], stdout=subprocess.PIPE, env=env)
        try:
            assert copy.stdout is not None
            first = copy.stdout.read(64 * 1024)  # the rest waits on this pipe: the copy is open
            assert copy_helpers(engine) and copy.poll() is None
            start = subprocess.Popen([*ENGCTL, "start", cid], stdout=subprocess.DEVNULL, env=env)
            try:
                with pytest.raises(subprocess.TimeoutExpired):
                    start.wait(timeout=2)  # it waits for the copy
                assert engine.call("container.inspect", id=cid)["State"]["Status"] == "exited"
                rest = copy.stdout.read()
                assert copy.wait(timeout=60) == 0
                assert start.wait(timeout=60) == 0
            finally:
                start.kill()
                start.wait()
            assert engctl(engine, "wait", cid).stdout.strip() == b"0"
        finally:
            copy.kill()
            copy.wait()
        files = untar(first + rest)
        assert files["big:data"] == bytes(32 << 20)
        assert (volume_dir(engine, name) / "seen").read_text().strip() == str(32 << 20)
        wait_helpers_gone(engine)
    finally:
        remove_everything(engine, [name])


def test_copy_into_a_read_only_container_goes_only_into_its_writable_mounts(engine: Daemon,
                                                                           tmp_path: Path) -> None:
    """``--read-only``: a copy into the root filesystem is refused in dockerd's words,
    stopped (its layer is writable on the host) or running; into a writable volume or bind
    it lands; into a read-only one it is refused too."""
    name = f"cpro-{secrets.token_hex(4)}"
    bind, readonly = tmp_path / "bind", tmp_path / "ro"
    bind.mkdir()
    readonly.mkdir()
    (tmp_path / "file").write_text("copied\n")
    with engine.client() as c:
        cid = str(c.call("container.create", {
            "image": "busybox", "cmd": ["sleep", "1000"], "read_only": True,
            "volumes": [f"{name}:/vol", f"{bind}:/bind", f"{readonly}:/ro:ro"]})["Id"])
    try:
        for running in (False, True):
            if running:
                engctl(engine, "start", cid)
            for dest in ("/", "/etc/copied", "/tmp/"):
                refused = engctl(engine, "cp", str(tmp_path / "file"), f"{cid}:{dest}", check=False)
                assert refused.returncode != 0, (running, dest)
                assert b"container rootfs is marked read-only" in refused.stderr, refused.stderr
            refused = engctl(engine, "cp", str(tmp_path / "file"), f"{cid}:/ro/", check=False)
            assert b"mounted volume is marked read-only" in refused.stderr, refused.stderr
            engctl(engine, "cp", str(tmp_path / "file"), f"{cid}:/vol/in-{running}")
            engctl(engine, "cp", str(tmp_path / "file"), f"{cid}:/bind/")
            assert (volume_dir(engine, name) / f"in-{running}").read_text() == "copied\n"
            assert (bind / "file").read_text() == "copied\n"
            assert list(readonly.iterdir()) == []
        assert b"copied" not in exec_out(engine, cid, "ls", "/", "/etc")[1]
        diff = engine.call("container.diff", id=cid)
        assert not [d for d in diff if "file" in d["Path"] or "copied" in d["Path"]], diff
    finally:
        remove_everything(engine, [name])
