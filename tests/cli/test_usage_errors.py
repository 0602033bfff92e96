"""A command line engctl cannot parse exits 125 (docker's code for an engine or usage error),
never argparse's 2, and says which flag and which command's help to read. Flags after the
image still belong to the container's command."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.testing.daemon import Daemon, require_binary
from engine.testing.images import busybox_image, write_docker_archive


def engctl(*argv: str, host: str) -> subprocess.CompletedProcess[str]:
    """The real program, in its own process (the exit code is the process's)."""
    return subprocess.run(
        [sys.executable, "-m", "engine.cli.main", *argv], capture_output=True, text=True,
        timeout=60, env={**os.environ, "ENGINE_HOST": host},
    )


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["run", "--bogus", "busybox"], ["unknown flag: --bogus", "See 'engctl run --help'."]),
        (["ps", "--nope"], ["unknown flag: --nope", "See 'engctl ps --help'."]),
        (["network", "create", "--x", "n"], ["unknown flag: --x", "engctl network create --help"]),
        (["version", "extra"], ["unexpected argument: extra"]),
        (["run", "--memory"], ["--memory: expected one argument"]),
        (["run"], ["required: image"]),
        (["nosuch"], ["invalid choice: 'nosuch'"]),
        (["network", "create", "-o", "mtu", "n"], ["invalid --opt 'mtu': expected KEY=VALUE"]),
        (["network", "create", "--label", "=x", "n"], ["invalid --label '=x': expected KEY=VALUE"]),
        (["volume", "create", "--opt", "type", "v"], ["invalid --opt 'type': expected KEY=VALUE"]),
        (["build", "--label", "=z", "."], ["invalid --label '=z': expected KEY=VALUE"]),
    ],
)
def test_usage_errors_exit_125(tmp_path: Path, argv: list[str], says: list[str]) -> None:
    # no daemon at this address: the parse must fail before any connection is tried
    out = engctl(*argv, host=f"unix://{tmp_path}/none.sock")
    assert out.returncode == 125, out.stderr
    for text in says:
        assert text in out.stderr
    assert "cannot connect" not in out.stderr.lower()


def test_help_still_exits_0(tmp_path: Path) -> None:
    out = engctl("run", "--help", host=f"unix://{tmp_path}/none.sock")
    assert out.returncode == 0 and "--pids-limit" in out.stdout


@pytest.fixture(scope="module")
def engine_with_busybox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    runtime = "crun" if shutil.which("crun") else "runc"
    require_binary(runtime)
    require_binary("conmon")
    archive = tmp_path_factory.mktemp("images") / "busybox.tar"
    write_docker_archive(archive, [busybox_image()])
    d = Daemon(extra_args=["--default-runtime", runtime, "--default-network", "none"])
    d.start()
    try:
        d.call("image.load", path=str(archive))
        yield d
    finally:
        d.cleanup()


def test_flags_after_the_image_go_to_the_container(engine_with_busybox: Daemon) -> None:
    out = engctl("run", "--rm", "busybox", "echo", "--bogus", "-d", host=engine_with_busybox.host)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "--bogus -d\n"
    # and an unknown flag before the image is refused with the daemon up, too
    out = engctl("run", "--bogus", "--rm", "busybox", "true", host=engine_with_busybox.host)
    assert out.returncode == 125 and "unknown flag: --bogus" in out.stderr


@pytest.mark.parametrize("bad", ["nan", "1e308", "inf", "1.5", "-2", "315360001"])
def test_stop_timeout_that_is_not_whole_seconds_exits_125(engine_with_busybox: Daemon, bad: str) -> None:
    """issue 16.5: `stop -t nan` / `-t 1e308` are usage errors (125) naming the flag; the
    container is left running, and a good -t still stops it."""
    host = engine_with_busybox.host
    name = f"t{abs(hash(bad)) % 10**8}"
    out = engctl("run", "-d", "--name", name, "busybox", "sleep", "600", host=host)
    assert out.returncode == 0, out.stderr
    try:
        out = engctl("stop", "-t", bad, name, host=host)
        assert out.returncode == 125, out.stderr
        assert f"-t/--time/--timeout: invalid timeout '{bad}'" in out.stderr
        assert "whole seconds" in out.stderr
        assert engine_with_busybox.call("container.inspect", id=name)["State"]["Running"] is True
        out = engctl("create", "--stop-timeout", bad, "busybox", host=host)
        assert out.returncode == 125 and "--stop-timeout: invalid timeout" in out.stderr
        out = engctl("stop", "-t", "0", name, host=host)
        assert out.returncode == 0, out.stderr
        assert engine_with_busybox.call("container.inspect", id=name)["State"]["Running"] is False
    finally:
        engctl("rm", "-f", name, host=host)
