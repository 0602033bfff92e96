"""A container's environment (`-e DB_PASSWORD=...`) is readable by root only: the files that
hold it are 0600 in 0700 directories (issue 16, item 4). Real engined, runc/crun, conmon."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

from engine.testing.daemon import Daemon, require_binary

from .conftest import run_attached

SECRET = "s3cr3t-DB-p4ss-8d1f0c"


def files_containing(top: Path, needle: bytes) -> list[Path]:
    found = []
    for dirpath, _, filenames in os.walk(top):
        for name in filenames:
            path = Path(dirpath) / name
            try:
                if path.is_file() and not path.is_symlink() and needle in path.read_bytes():
                    found.append(path)
            except OSError:
                pass
    return found


def readable_by_nobody(path: Path) -> bool:
    """Whether uid/gid 65534 on the host can read ``path`` (a real permission check)."""
    done = subprocess.run(["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups",
                           "cat", str(path)], capture_output=True)
    return done.returncode == 0


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_environment_is_readable_by_root_only(engine: Daemon) -> None:
    require_binary("setpriv")
    # Running as an unprivileged user, reading the bind-mounted /etc/hosts: the tighter
    # directories must not get in the container's way.
    code, out, err = run_attached(engine, name="secretive", user="65534:65534",
                                  env=[f"DB_PASSWORD={SECRET}"],
                                  cmd=["sh", "-c", 'test -n "$DB_PASSWORD" && cat /etc/hosts >/dev/null'
                                                   ' && echo ok'])
    assert (code, out) == (0, b"ok\n"), err
    cid = engine.call("container.inspect", id="secretive")["Id"]
    cdir = engine.root / "containers" / cid
    run_dir = engine.run_root / "containers" / cid
    bundle = run_dir / "bundle"
    assert mode(cdir) == 0o700 and mode(run_dir) == 0o700 and mode(bundle) == 0o700
    for path in (cdir / "config.json", cdir / "state.json", bundle / "config.json"):
        assert mode(path) == 0o600, path

    holders = files_containing(engine.root, SECRET.encode()) + files_containing(
        engine.run_root, SECRET.encode())
    assert cdir / "config.json" in holders and bundle / "config.json" in holders
    for path in holders:
        assert not readable_by_nobody(path), f"{path} is readable by other users"
    assert readable_by_nobody(Path("/etc/hostname")) or readable_by_nobody(Path("/etc/passwd"))

    # Written again at the next start: still owner only.
    engine.call("container.start", id=cid)
    engine.call("container.wait", id=cid)
    assert mode(bundle / "config.json") == 0o600 and mode(cdir / "state.json") == 0o600
