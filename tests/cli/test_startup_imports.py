"""What engctl imports on its way to the daemon. Start-up is most of engctl's own latency
(``engctl run`` is benchmarked against podman), and each of these modules costs it from half
a millisecond (collections) to several (typing, argparse, socket.py, msgpack, json) or tens
(trio, httpx, cattrs, pluggy). Checked in a fresh interpreter, counting only what engctl
itself adds to what the interpreter had loaded at start."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator

import pytest

from engine.cli import main
from engine.testing.daemon import Daemon, record_rpc_methods, require_binary
from engine.testing.images import busybox_image, write_docker_archive

HEAVY = {"trio", "httpx", "cattrs", "pluggy", "attrs", "attr", "asyncio", "argparse", "typing",
         "enum", "re", "socket", "selectors", "msgpack", "collections", "datetime", "json",
         "pathlib", "ipaddress", "platform", "importlib.util", "dataclasses", "inspect",
         "subprocess", "threading", "gettext", "locale", "shutil", "struct", "importlib",
         "warnings"}

PROBE = """
import json, sys
before = set(sys.modules)
import engine.cli.main as m
code = {code}
added = sorted(set(sys.modules) - before)
print(json.dumps({{"code": code, "added": added}}))
"""


def engctl_imports(code: str, host: str | None = None) -> tuple[object, list[str]]:
    """Run ``code`` (an expression using engine.cli.main as ``m``) in a fresh interpreter;
    its value and the modules engctl added."""
    probe = PROBE.format(code=code)
    env = None if host is None else {**os.environ, "ENGINE_HOST": host}
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         timeout=60, env=env)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.splitlines()[-1])
    return result["code"], result["added"]


def heavy(added: list[str]) -> list[str]:
    return [name for name in added if name in HEAVY or name.split(".")[0] in HEAVY]


@pytest.mark.parametrize("argv", [
    ["version"], ["run", "--rm", "--network", "none", "busybox", "true"],
    ["run", "-d", "-e", "A=1", "--name", "web", "-p", "80:80", "--memory", "64m", "busybox"],
    ["ps", "-a"], ["rm", "-f", "web"], ["exec", "web", "ls"], ["logs", "-f", "web"],
])
def test_parsing_a_command_imports_nothing_heavy_and_one_command_module(argv: list[str]) -> None:
    _, added = engctl_imports(f"m.parse({argv!r}) and 0")
    assert heavy(added) == []
    commands = [n for n in added if n.startswith("engine.cli.commands.")]
    assert commands == [f"engine.cli.commands.{main.COMMANDS[argv[0]]}"]


def test_the_heavy_list_can_fail() -> None:
    # the probe sees what argparse, the old parser, imported
    _, added = engctl_imports("m.build_parser() and 0")
    assert "argparse" in heavy(added)


def test_engctl_version_against_a_daemon(daemon: Daemon) -> None:
    code, added = engctl_imports("m.run(['version'])", host=daemon.host)
    assert code == 0
    assert heavy(added) == []


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


def test_engctl_run_against_a_daemon(engine_with_busybox: Daemon) -> None:
    d = engine_with_busybox
    code, added = engctl_imports("m.run(['run', '--rm', '--network', 'none', 'busybox', 'true'])",
                                 host=d.host)
    assert code == 0
    assert heavy(added) == []
    code, added = engctl_imports("m.run(['run', '--rm', 'busybox', 'sh', '-c', 'exit 3'])", host=d.host)
    assert code == 3
    assert heavy(added) == []


def test_engctl_ps_against_a_daemon(engine_with_busybox: Daemon) -> None:
    d = engine_with_busybox
    with d.client() as c:
        c.call("container.create", {"image": "busybox", "cmd": ["sh", "-c", "echo \"x\""]})
    code, added = engctl_imports("m.run(['ps', '-a'])", host=d.host)
    assert code == 0
    assert heavy(added) == []


def test_engctl_run_makes_one_call_when_the_image_is_there(
    engine_with_busybox: Daemon, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """One container.run (create + start in the daemon); no image.inspect before or after
    (docker's order: run, and pull only if the daemon says the image is missing)."""
    calls = record_rpc_methods(monkeypatch, engine_with_busybox.host)
    assert main.run(["run", "--rm", "busybox", "echo", "hi"]) == 0
    assert capsys.readouterr().out == "hi\n"
    assert calls == ["container.run"]

    calls.clear()
    assert main.run(["run", "--rm", "--pull", "never", "nosuch:1", "true"]) == 125
    assert "no such image" in capsys.readouterr().err
    assert calls == ["container.run"]

    calls.clear()  # another NotFound (a network) is reported as such: the error has no
    # missing_image detail, so no look at the image and no pull
    assert main.run(["run", "--rm", "--network", "nonet", "busybox", "true"]) == 125
    assert "nonet" in capsys.readouterr().err
    assert calls == ["container.run"]
