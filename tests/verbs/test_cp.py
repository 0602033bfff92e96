"""engctl cp and the container.copy_* RPCs: both directions, running and stopped
containers, tar streams, and containers whose symlinks point at / and ../../.. — the engine
must resolve them inside the container and never read or write the host's files."""

from __future__ import annotations

import io
import os
import secrets
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.testing.daemon import Daemon
from tests.verbs.conftest import engctl, exec_out, run_detached

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
    exec_out(engine, cid, "true")  # the script ran up to its sleep
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
    exec_out(engine, cid, "true")
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
    exec_out(engine, cid, "true")
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
        exec_out(engine, cid, "true")
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
