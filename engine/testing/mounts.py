"""Host mounts for tests of mount propagation: a directory bind-mounted on itself with the
propagation a test needs, and everything mounted under it undone afterwards, even when the
test fails."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

from engine.testing.daemon import mounts_under


def mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True, timeout=30)


def unmount_all(base: Path) -> None:
    """Lazily unmount ``base`` and every mount under it, deepest first."""
    for point in sorted(mounts_under(base), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, timeout=30)


@contextlib.contextmanager
def propagating_dir(path: Path, propagation: str) -> Iterator[Path]:
    """``path`` (created) as a mount point of its own with ``propagation`` (rshared or
    rprivate: ``mount --make-<propagation>``), as kubelet keeps its pod volumes."""
    path.mkdir(parents=True, exist_ok=True)
    try:
        mount("--bind", str(path), str(path))
        mount(f"--make-{propagation}", str(path))
        yield path
    finally:
        unmount_all(path)
