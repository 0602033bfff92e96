"""Build contexts: unpacked safely (nothing written outside, no devices), .dockerignore
honoured (no root needed)."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from engine.build.context import (
    HostileContext,
    extract_context,
    ignored,
    pack_directory,
    parse_dockerignore,
    read_context_file,
)


def make_tar(*members: tuple[str, str, bytes | str]) -> io.BytesIO:
    """(name, kind, data or link target) members: kind file, dir, sym, link, chr."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, kind, data in members:
            info = tarfile.TarInfo(name)
            info.mode = 0o644
            if kind == "file":
                assert isinstance(data, bytes)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
                continue
            info.type = {"dir": tarfile.DIRTYPE, "sym": tarfile.SYMTYPE, "link": tarfile.LNKTYPE,
                         "chr": tarfile.CHRTYPE}[kind]
            if kind in ("sym", "link"):
                assert isinstance(data, str)
                info.linkname = data
            tar.addfile(info)
    buf.seek(0)
    return buf


def test_plain_context(tmp_path: Path) -> None:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    archive = make_tar(("Dockerfile", "file", b"FROM busybox\n"), ("dir/a.txt", "file", b"a"),
                       ("dir/link", "sym", "a.txt"), ("hard", "link", "dir/a.txt"))
    assert extract_context(archive, ctx) == 4
    assert (ctx / "dir" / "a.txt").read_bytes() == b"a"
    assert os.readlink(ctx / "dir" / "link") == "a.txt"
    assert (ctx / "hard").read_bytes() == b"a"
    assert read_context_file(ctx, "Dockerfile") == b"FROM busybox\n"


def test_gzip_context(tmp_path: Path) -> None:
    raw = make_tar(("Dockerfile", "file", b"FROM x\n")).getvalue()
    buf = io.BytesIO()
    import gzip

    buf.write(gzip.compress(raw))
    buf.seek(0)
    extract_context(buf, tmp_path)
    assert (tmp_path / "Dockerfile").read_bytes() == b"FROM x\n"


@pytest.mark.parametrize(("members", "words"), [
    ([("../escape.txt", "file", b"x")], "path traversal"),
    ([("a/../../escape.txt", "file", b"x")], "path traversal"),
    ([("link", "sym", "/etc")], "outside the build context"),
    ([("dir/link", "sym", "../../..")], "outside the build context"),
    ([("null", "chr", "")], "device file"),
    ([("hard", "link", "/etc/passwd")], "hard link"),
])
def test_hostile_members_are_refused(tmp_path: Path, members: list[tuple[str, str, bytes | str]],
                                     words: str) -> None:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    with pytest.raises(HostileContext, match=words):
        extract_context(make_tar(("Dockerfile", "file", b"FROM x\n"), *members), ctx)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ctx"]  # nothing written beside it


def test_a_symlink_inside_cannot_lead_a_later_member_out(tmp_path: Path) -> None:
    """A link to ``.`` (inside) then a member through it: resolved inside the context."""
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    extract_context(make_tar(("up", "sym", "."), ("up/up/x.txt", "file", b"x")), ctx)
    assert (ctx / "x.txt").read_bytes() == b"x"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ctx"]


def test_dockerignore_patterns() -> None:
    patterns = parse_dockerignore("# comment\n*.log\n/build\n**/tmp\n!keep.log\nsecret?\n")
    assert ignored("a.log", patterns)
    assert not ignored("keep.log", patterns)
    assert not ignored("sub/a.log", patterns)  # * does not cross directories
    assert ignored("build/x/y", patterns)
    assert ignored("a/b/tmp/z", patterns)
    assert ignored("tmp", patterns)
    assert ignored("secret1", patterns)
    assert not ignored("secret12", patterns)
    assert not ignored("src/main.c", patterns)


def test_dockerignore_applied_while_unpacking(tmp_path: Path) -> None:
    archive = make_tar((".dockerignore", "file", b"*.log\nDockerfile\n.dockerignore\n"),
                       ("Dockerfile", "file", b"FROM x\n"), ("a.log", "file", b"x"), ("a.txt", "file", b"y"))
    extract_context(archive, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".dockerignore", "Dockerfile", "a.txt"]


def test_pack_directory_round_trip(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "Dockerfile").write_text("FROM x\n")
    (src / "sub" / "a.txt").write_text("a")
    (src / "skip.log").write_text("no")
    (src / ".dockerignore").write_text("*.log\n")
    os.symlink("/etc/passwd", src / "sub" / "abs-link")
    buf = io.BytesIO()
    pack_directory(src, buf, parse_dockerignore("*.log\n"))
    names = tarfile.open(fileobj=io.BytesIO(buf.getvalue())).getnames()
    assert names[0] == ".dockerignore" and "skip.log" not in names and "sub/a.txt" in names
    assert "sub/abs-link" in names  # packed as a link; the daemon decides
