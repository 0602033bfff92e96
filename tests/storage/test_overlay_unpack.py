"""The layer unpacker: formats, metadata, whiteouts, odd-but-legal tars."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from engine.plugins.storage_overlay.driver import OverlayDriver
from engine.plugins.storage_overlay.unpack import OPAQUE_XATTR, extract

from .layertar import LayerTar

WriteLayer = Callable[..., tuple[Path, str]]


def unpack_plain(blob: Path, tmp_path: Path) -> tuple[Path, str, int]:
    target = tmp_path / "out"
    target.mkdir()
    result = extract(blob, target)
    return target, result.diff_id, result.size


def rich_layer() -> LayerTar:
    return (
        LayerTar()
        .dir("etc", mode=0o755, mtime=1_500_000_000)
        .file("etc/hostname", b"box\n", mode=0o644, uid=1234, gid=5678, mtime=1_500_000_123)
        .file("bin/su", b"#!setuid", mode=0o4755)
        .file("data/x", b"xattr", xattrs={"user.note": "hello", "trusted.overlay.opaque": "y"})
        .symlink("bin/sh", "/bin/busybox")
        .symlink("etc/rel", "../data/x", uid=7, gid=8)
        .file("bin/busybox", b"BB" * 1000, mode=0o755)
        .hardlink("bin/ls", "bin/busybox")
        .chardev("dev/null", 1, 3, mode=0o666)
    )


@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
def test_formats_and_metadata_are_preserved(
    compression: str, write_layer: WriteLayer, tmp_path: Path
) -> None:
    blob, want = write_layer(rich_layer(), compression)
    root, diff_id, size = unpack_plain(blob, tmp_path)

    assert diff_id == want
    assert size == len(b"box\n") + len(b"#!setuid") + len(b"xattr") + 2000
    hostname = root / "etc/hostname"
    assert hostname.read_bytes() == b"box\n"
    st = hostname.stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1234, 5678, 0o644)
    assert st.st_mtime == 1_500_000_123
    assert (root / "etc").stat().st_mtime == 1_500_000_000  # dir mtime survives its children
    assert stat.S_IMODE((root / "bin/su").stat().st_mode) == 0o4755
    assert os.getxattr(root / "data/x", "user.note") == b"hello"
    # a layer may not forge overlay metadata: only whiteouts produce it
    with pytest.raises(OSError):
        os.getxattr(root / "data/x", OPAQUE_XATTR)
    assert os.readlink(root / "bin/sh") == "/bin/busybox"
    assert os.lstat(root / "etc/rel").st_uid == 7
    assert (root / "bin/ls").stat().st_ino == (root / "bin/busybox").stat().st_ino
    dev = (root / "dev/null").lstat()
    assert stat.S_ISCHR(dev.st_mode) and dev.st_rdev == os.makedev(1, 3)
    assert stat.S_IMODE(dev.st_mode) == 0o666
    assert stat.S_IMODE((root / "bin").stat().st_mode) == 0o755  # implicit parent


def test_whiteouts_become_overlay_whiteouts(write_layer: WriteLayer, tmp_path: Path) -> None:
    layer = LayerTar().file("a/.wh.gone").file("opq/.wh..wh..opq").file("opq/new", b"n")
    blob, _ = write_layer(layer)
    root, _, _ = unpack_plain(blob, tmp_path)

    gone = (root / "a/gone").lstat()
    assert stat.S_ISCHR(gone.st_mode) and gone.st_rdev == os.makedev(0, 0)
    assert os.getxattr(root / "opq", OPAQUE_XATTR) == b"y"
    names = {p.name for p in root.rglob("*")}
    assert not any(n.startswith(".wh.") for n in names)
    assert (root / "opq/new").read_bytes() == b"n"


def test_directory_entry_after_its_files(write_layer: WriteLayer, tmp_path: Path) -> None:
    layer = (
        LayerTar()
        .file("d/sub/f", b"content")
        .dir("d/sub", mode=0o750, uid=11, gid=12, mtime=1_234_567_890)
        .dir("./d/", mode=0o711)
        .dir("./", mode=0o751)
    )
    blob, _ = write_layer(layer)
    root, _, _ = unpack_plain(blob, tmp_path)

    assert (root / "d/sub/f").read_bytes() == b"content"
    st = (root / "d/sub").stat()
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o750, 11, 12)
    assert st.st_mtime == 1_234_567_890
    assert stat.S_IMODE((root / "d").stat().st_mode) == 0o711
    assert stat.S_IMODE(root.stat().st_mode) == 0o751  # "./" is the layer root itself


def test_repeated_entries_later_wins(write_layer: WriteLayer, tmp_path: Path) -> None:
    layer = (
        LayerTar()
        .file("x", b"one")
        .file("x", b"two", mode=0o600)
        .file("y", b"file")
        .symlink("y", "x")
        .dir("z")
        .file("z/inner", b"i")
        .file("z", b"now a file")
        .symlink("w", "/nowhere")
        .dir("w", mode=0o700)
    )
    blob, _ = write_layer(layer, "none")
    root, _, _ = unpack_plain(blob, tmp_path)

    assert (root / "x").read_bytes() == b"two"
    assert stat.S_IMODE((root / "x").stat().st_mode) == 0o600
    assert os.readlink(root / "y") == "x"
    assert (root / "z").read_bytes() == b"now a file"
    assert (root / "w").is_dir() and not (root / "w").is_symlink()


def test_absolute_names_are_relative_to_the_layer(write_layer: WriteLayer, tmp_path: Path) -> None:
    layer = LayerTar().file("/etc/abs", b"a").file("./rel/./f", b"r").file("a/../b", b"b")
    blob, _ = write_layer(layer)
    root, _, _ = unpack_plain(blob, tmp_path)
    assert (root / "etc/abs").read_bytes() == b"a"
    assert (root / "rel/f").read_bytes() == b"r"
    assert (root / "b").read_bytes() == b"b"


def test_diff_id_covers_bytes_after_the_end_marker(write_layer: WriteLayer, tmp_path: Path) -> None:
    layer = LayerTar(trailer=b"\0" * 10240 + b"junk")
    layer.file("f", b"data")
    blob, want = write_layer(layer, "zstd")
    _, diff_id, _ = unpack_plain(blob, tmp_path)
    assert diff_id == want


async def test_driver_unpack_and_layer_files(
    driver: OverlayDriver, write_layer: WriteLayer
) -> None:
    blob, diff_id = write_layer(rich_layer())
    info = await driver.unpack_layer(blob, expected_diff_id=diff_id)
    assert info.diff_id == diff_id
    assert await driver.has_layer(diff_id)
    assert await driver.list_layers() == [diff_id]
    diff = driver.layer_dir(diff_id) / "diff"
    assert (diff / "etc/hostname").read_bytes() == b"box\n"
    # no debris beside the layer
    assert [p.name for p in driver.layers_dir.iterdir()] == [diff_id.removeprefix("sha256:")]
    links = list(driver.links_dir.iterdir())
    assert len(links) == 1 and links[0].resolve() == diff.resolve()
    usage = await driver.usage()
    assert (usage.layers, usage.layers_bytes) == (1, info.size)
