"""A bind's mount propagation through engctl, with runc and crun: ``-v SRC:DST:rshared``
exchanges mounts with the host both ways, ``--mount type=bind,…,bind-propagation=rslave``
receives the host's only, a plain bind neither; inspect shows it; a source that cannot
propagate (not on a shared host mount) is refused with the reason."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.testing.daemon import Daemon
from engine.testing.mounts import mount, propagating_dir

ENGCTL = [sys.executable, "-m", "engine.cli.main"]


def engctl(d: Daemon, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([*ENGCTL, *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "ENGINE_HOST": d.host})
    if check:
        assert proc.returncode == 0, f"engctl {' '.join(args)} failed: {proc.stderr}"
    return proc


@pytest.mark.parametrize(("how", "mode"), [("-v", "rshared"), ("--mount", "rslave"), ("-v", "")])
def test_bind_propagation_between_host_and_container(engine: Daemon, tmp_path: Path, how: str,
                                                     mode: str) -> None:
    flags = tmp_path / "flags"
    flags.mkdir()
    (flags / "from-host").write_text("host\n")
    with propagating_dir(tmp_path / "vol", "rshared") as source:
        (source / "hostmnt").mkdir()
        (source / "ctrmnt").mkdir()
        if how == "-v":
            spec = ["-v", f"{source}:/mnt/vol" + (f":{mode}" if mode else "")]
        else:
            spec = ["--mount", f"type=bind,src={source},dst=/mnt/vol,bind-propagation={mode}"]
        # SYS_ADMIN: the container mounts too
        cid = engctl(engine, "run", "-d", "--cap-add", "SYS_ADMIN", *spec, "busybox", "sleep", "1000").stdout.strip()
        try:
            info = json.loads(engctl(engine, "inspect", cid).stdout)
            info = info[0] if isinstance(info, list) else info
            assert [(m["Source"], m["Propagation"]) for m in info["Mounts"]] == [(str(source), mode or "rprivate")]
            assert info["HostConfig"]["Binds"] == [f"{source}:/mnt/vol" + (f":{mode}" if mode else "")]

            mount("--bind", str(flags), str(source / "hostmnt"))
            seen = engctl(engine, "exec", cid, "ls", "/mnt/vol/hostmnt").stdout.split()
            assert seen == (["from-host"] if mode else [])

            engctl(engine, "exec", cid, "sh", "-c", "mount -t tmpfs tmpfs /mnt/vol/ctrmnt && "
                   "echo ctr > /mnt/vol/ctrmnt/from-container")
            assert engctl(engine, "exec", cid, "cat", "/mnt/vol/ctrmnt/from-container").stdout == "ctr\n"
            assert (source / "ctrmnt" / "from-container").exists() == (mode == "rshared")
        finally:
            engctl(engine, "rm", "-f", cid, check=False)


def test_a_bind_that_cannot_propagate_is_refused(engine: Daemon, tmp_path: Path) -> None:
    with propagating_dir(tmp_path / "private", "rprivate") as source:
        refused = engctl(engine, "run", "-d", "--name", "refused", "-v", f"{source}:/mnt:rshared", "busybox",
                         "sleep", "1000", check=False)
        assert refused.returncode != 0
        assert f"path '{source}' is mounted on '{source}' but it is not a shared mount" in refused.stderr
        # the container was made; it cannot start until the host's mount is shared
        assert json.loads(engctl(engine, "inspect", "refused").stdout)[0]["State"]["Status"] in ("created", "exited")
        mount("--make-rshared", str(source))
        engctl(engine, "start", "refused")
        engctl(engine, "rm", "-f", "refused")
        bad = engctl(engine, "run", "-v", f"{source}:/mnt:rshared,rslave", "busybox", "true", check=False)
        assert bad.returncode != 0 and "invalid volume option 'rslave'" in bad.stderr
