"""Hostile layers: each is refused with UnsafeContent, writes nothing outside the layer and
leaves no temp dir, no layer and no link behind."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from engine.errors import UnsafeContent
from engine.plugins.storage_overlay.driver import OverlayDriver

from .layertar import LayerTar

WriteLayer = Callable[..., tuple[Path, str]]


def hostile_layers(outside: Path) -> dict[str, tuple[LayerTar, str]]:
    """name -> (layer, the entry the error must name)."""
    return {
        "dotdot": (LayerTar().file("../escape", b"x"), "../escape"),
        "deep-dotdot": (LayerTar().file("a/b/../../../escape", b"x"), "a/b/../../../escape"),
        "absolute-dotdot": (LayerTar().file("/abs/../../etc/x", b"x"), "/abs/../../etc/x"),
        "abs-symlink-then-file": (
            LayerTar().symlink("evil", str(outside)).file("evil/pwned", b"x"),
            "evil/pwned",
        ),
        "rel-symlink-dir-then-file": (
            LayerTar().dir("d").symlink("d/up", "../../../../outside").file("d/up/f", b"x"),
            "d/up/f",
        ),
        "symlink-then-nested-dir": (
            LayerTar().symlink("evil", str(outside)).dir("evil/sub"),
            "evil/sub",
        ),
        "hardlink-out": (
            LayerTar().hardlink("link", "../../outside/target"),
            "../../outside/target",
        ),
        "hardlink-through-symlink": (
            LayerTar().symlink("evil", str(outside)).hardlink("link", "evil/target"),
            "link",
        ),
        "whiteout-through-symlink": (
            LayerTar().symlink("evil", str(outside)).file("evil/.wh.target"),
            "evil/.wh.target",
        ),
        "opaque-through-symlink": (
            LayerTar().symlink("evil", str(outside)).file("evil/.wh..wh..opq"),
            "evil/.wh..wh..opq",
        ),
        "dotdot-whiteout": (LayerTar().file("a/.wh..."), "a/.wh..."),
    }


CASES = sorted(hostile_layers(Path("/x")))


def snapshot(path: Path) -> dict[str, tuple[int, int, bytes]]:
    out = {}
    for p in sorted(path.rglob("*")):
        st = p.lstat()
        out[str(p)] = (st.st_mode, st.st_mtime_ns, p.read_bytes() if p.is_file() else b"")
    return out


@pytest.mark.parametrize("case", CASES)
async def test_hostile_layer_is_refused(
    case: str, driver: OverlayDriver, write_layer: WriteLayer, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "target").write_bytes(b"precious")
    before = snapshot(outside)
    layer, entry = hostile_layers(outside)[case]
    blob, diff_id = write_layer(layer)

    with pytest.raises(UnsafeContent) as caught:
        await driver.unpack_layer(blob, expected_diff_id=diff_id)

    assert repr(entry) in str(caught.value)
    assert snapshot(outside) == before
    assert not (tmp_path / "escape").exists() and not (tmp_path.parent / "escape").exists()
    assert list(driver.layers_dir.iterdir()) == []  # no temp dir, no layer
    assert list(driver.links_dir.iterdir()) == []
    assert await driver.list_layers() == []
