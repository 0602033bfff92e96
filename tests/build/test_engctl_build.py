"""engctl build through the RPC's image.build: the same builder and lines as docker build,
a real daemon running each RUN in a container (root)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.testing.daemon import Daemon, in_ci, mounts_under, require_binary
from engine.testing.images import busybox_image, write_docker_archive


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    if os.geteuid() != 0:
        if in_ci():
            pytest.fail("builds run containers and need root")
        pytest.skip("needs root")
    for binary in ("runc", "conmon"):
        require_binary(binary)
    archive = tmp_path / "busybox.tar"
    write_docker_archive(archive, [busybox_image()])
    d = Daemon(extra_args=["--default-network", "none"])
    try:
        d.start()
        d.call("image.load", path=str(archive))
        yield d
    finally:
        d.cleanup()


def engctl(daemon: Daemon, *argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "engine.cli.main", *argv], capture_output=True, text=True,
                          timeout=120, cwd=cwd, env={**os.environ, "ENGINE_HOST": daemon.host})


def test_engctl_build_run_and_failure(daemon: Daemon, tmp_path: Path) -> None:
    context = tmp_path / "ctx"
    (context / "files").mkdir(parents=True)
    (context / "files" / "one.txt").write_text("one\n")
    (context / "secret.key").write_text("never\n")
    (context / ".dockerignore").write_text("*.key\n")
    (context / "Dockerfile").write_text("FROM busybox\nARG WHO=nobody\nCOPY files /files\n"
                                        "RUN echo hi-$WHO > /files/two.txt\nCMD [\"cat\", \"/files/one.txt\", "
                                        "\"/files/two.txt\"]\n")
    built = engctl(daemon, "build", "-t", "mine:1", "--build-arg", "WHO=you", ".", cwd=context)
    assert built.returncode == 0, built.stderr + daemon.log()[-3000:]
    assert "Step 1/5 : FROM busybox\n" in built.stdout
    assert "Successfully tagged mine:1\n" in built.stdout
    ran = engctl(daemon, "run", "--rm", "mine:1")
    assert ran.stdout == "one\nhi-you\n", ran.stderr
    ignored = engctl(daemon, "run", "--rm", "mine:1", "ls", "/files")
    assert ignored.stdout == "one.txt\ntwo.txt\n"

    quiet = engctl(daemon, "build", "-q", str(context))
    assert quiet.returncode == 0 and quiet.stdout.startswith("sha256:") and "Step" not in quiet.stdout

    other = tmp_path / "Dockerfile.fail"
    other.write_text("FROM busybox\nRUN exit 4\n")
    before = {i["Id"] for i in daemon.call("image.list", all=True)}
    failed = engctl(daemon, "build", "-f", str(other), str(context))
    assert failed.returncode == 4
    assert "The command '/bin/sh -c exit 4' returned a non-zero code: 4" in failed.stderr
    assert {i["Id"] for i in daemon.call("image.list", all=True)} == before
    assert daemon.call("container.list", all=True) == []
    assert [m for m in mounts_under(daemon.base) if "/merged" in m] == []

    bad = engctl(daemon, "build", str(tmp_path / "nope"))
    assert bad.returncode == 125 and "is not a directory" in bad.stderr
