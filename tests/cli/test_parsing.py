"""engctl's fast command-line path (engine/cli/argspec.py) against argparse: where it answers,
it must answer exactly what argparse does; where argparse refuses or prints help, it must
step aside; and the everyday command lines must not need argparse at all."""

from __future__ import annotations

import importlib
from typing import Any

import pytest

from engine.cli import main
from engine.cli.argspec import Commands, Namespace, fast_parse

# Command lines the fast path must handle itself (engctl would otherwise import argparse).
FAST = [
    ["version"],
    ["version", "-f", "json"],
    ["-H", "unix:///tmp/x.sock", "version"],
    ["--host=unix:///tmp/x.sock", "info", "--format", "json"],
    ["run", "--rm", "--network", "none", "busybox", "true"],
    ["run", "--rm", "busybox", "sh", "-c", "echo hi; exit 3"],
    ["run", "-d", "--name", "web", "--restart", "always", "-p", "8080:80", "busybox", "httpd", "-f"],
    ["run", "-it", "--rm", "busybox"],
    ["run", "-eA=1", "-e=B=2", "-p8080:80", "-hbox", "busybox"],
    ["run", "-e", "A=1", "-eB=2", "--env=C=3", "-v", "/a:/b:ro", "-m", "64m", "--cpus", "1.5",
     "--pids-limit", "10", "-u", "1000", "-w", "/tmp", "-h", "box", "--entrypoint", "", "busybox"],
    ["run", "--pull", "never", "--net", "host", "--read-only", "--init", "busybox", "ls", "-l", "/"],
    ["run", "--rm", "busybox", "--rm", "-d"],
    ["create", "--name", "c", "busybox"],
    ["start", "-a", "c"],
    ["stop", "-t", "1", "a", "b"],
    ["restart", "--time=3", "a"],
    ["kill", "-s", "SIGTERM", "a"],
    ["rm", "-f", "a", "b"],
    ["rm", "-fv", "a"],
    ["ps", "-a"],
    ["ps", "-aq", "--no-trunc"],
    ["ps", "-n", "3", "--filter", "name=web", "-f", "status=exited"],
    ["inspect", "-f", "{{.State.Status}}", "web"],
    ["logs", "-f", "--tail", "10", "web"],
    ["wait", "web"],
    ["exec", "web", "ls", "-l"],
    ["exec", "-e", "A=1", "-w", "/", "web", "sh", "-c", "x"],
    ["port", "web"],
    ["port", "web", "80/tcp"],
    ["rename", "a", "b"],
    ["container", "prune", "-f"],
    ["container", "ls", "-a"],
    ["pull", "--platform", "linux/amd64", "127.0.0.1:5000/busybox"],
    ["push", "-q", "r/x"],
    ["images"],
    ["images", "-a", "busybox"],
    ["images", "--digests", "--format", "json"],
    ["rmi", "-f", "a", "b"],
    ["tag", "a", "b"],
    ["load", "-i", "/tmp/x.tar"],
    ["save", "-o", "/tmp/x.tar", "--format", "oci", "busybox"],
    ["import", "-c", "CMD x", "f.tar", "r:t"],
    ["history", "--no-trunc", "busybox"],
    ["build", "-t", "a:1", "-t", "b", "--build-arg", "K=V", "-f", "x/Dockerfile", "."],
    ["build", "-q", "--no-cache", "--target", "stage", "--label", "a=b", "ctx"],
    ["image", "inspect", "busybox"],
    ["image", "ls", "-q"],
    ["image", "pull", "-q", "busybox"],
    ["login", "-u", "me", "--password-stdin", "reg"],
    ["logout", "reg"],
    ["events", "--since", "10m", "--filter", "type=container"],
    ["network", "create", "--subnet", "10.89.7.0/24", "--label", "a=b", "appnet"],
    ["network", "create", "--subnet", "10.89.7.0/24", "-o", "com.docker.network.driver.mtu=1400",
     "--opt", "com.docker.network.bridge.name=br0", "--ip-range", "10.89.7.128/25",
     "--aux-address", "r=10.89.7.2", "--aux-address=s=10.89.7.3", "-ocom.docker.network.bridge.enable_icc=false",
     "optnet"],
    ["run", "-d", "--network", "n", "--mac-address", "02:42:ac:11:00:02", "busybox"],
    ["create", "--mac-address=02:42:ac:11:00:03", "--ip", "10.89.7.9", "--network", "n", "busybox", "sh"],
    ["network", "ls", "-q"],
    ["network", "connect", "--alias", "db", "net", "c"],
    ["network", "rm", "a", "b"],
]

# Command lines argparse handles (help, errors, forms the fast path leaves alone); the fast
# path must step aside or agree.
OTHER = [
    [], ["-h"], ["--help"], ["nosuch"], ["run"], ["run", "--help"], ["run", "--nosuch", "busybox"],
    ["run", "--cpus", "x", "busybox"], ["run", "--pull", "sometimes", "busybox"],
    ["run", "-e"], ["run", "--rm=1", "busybox"], ["run", "--de", "busybox"], ["run", "-dp", "80", "busybox"],
    ["run", "-d=1", "busybox"], ["run", "-dq=1", "busybox"], ["run", "--", "busybox"], ["run", "busybox", "--", "ls"],
    ["run", "-e", "-x", "busybox"], ["rm"], ["rm", "a", "-f", "b"], ["rm", "a", "-f"], ["stop", "-t"],
    ["ps", "-n", "x"], ["port", "a", "b", "c"], ["tag", "a"], ["load"], ["container"],
    ["container", "nosuch"], ["network"], ["image"], ["version", "extra"], ["version", "-H", "x"],
    ["--ho", "x", "version"], ["-Hunix:///x", "version"], ["logs", "--tail", "-1", "w"],
    ["images", "-a", "busybox", "extra"], ["save", "--format", "tar", "-o", "x", "i"],
]


def argparse_result(argv: list[str]) -> Namespace | None:
    try:
        return main.build_parser().parse_args(argv, namespace=Namespace())
    except SystemExit:
        return None


def fast_result(argv: list[str]) -> Namespace | None:
    module = main.COMMANDS.get(main.find_command(argv) or "")
    if module is None:
        return None
    return fast_parse(main.command_parser((module,)), argv)


def comparable(ns: Namespace) -> dict[str, Any]:
    # the network command's usage function is a closure made per recording: compare names
    return {k: getattr(v, "__qualname__", v) if callable(v) else v for k, v in vars(ns).items()}


@pytest.mark.parametrize("argv", FAST, ids=" ".join)
def test_everyday_command_lines_parse_without_argparse_and_as_argparse_would(argv: list[str]) -> None:
    fast = fast_result(argv)
    assert fast is not None, "the fast path gave up"
    slow = argparse_result(argv)
    assert slow is not None
    assert comparable(fast) == comparable(slow)


@pytest.mark.parametrize("argv", OTHER, ids=lambda a: " ".join(a) or "(none)")
def test_other_command_lines_are_left_to_argparse_or_agree(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    fast = fast_result(argv)
    slow = argparse_result(argv)
    if fast is not None:
        assert slow is not None and comparable(fast) == comparable(slow)
    capsys.readouterr()


def test_fast_results_are_fresh_lists() -> None:
    # argparse copies an append option's default list; so must the fast path
    first = fast_result(["run", "-e", "A=1", "busybox"])
    second = fast_result(["run", "busybox"])
    assert first is not None and second is not None
    assert first.env == ["A=1"] and second.env == []


def test_command_table_matches_the_modules() -> None:
    for name in main.COMMAND_MODULES:
        commands = Commands("engctl", {})
        importlib.import_module(f"engine.cli.commands.{name}").setup(commands)
        assert sorted(commands.parsers) == sorted(c for c, m in main.COMMANDS.items() if m == name)


def test_help_and_errors_still_come_from_argparse(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main.run(["run"])
    assert exit_info.value.code == 125  # docker's usage-error code, not argparse's 2
    assert "the following arguments are required: image" in capsys.readouterr().err
    assert main.run(["network"]) == 0
    assert "engctl network" in capsys.readouterr().out and True
    with pytest.raises(SystemExit):
        main.run(["run", "--help"])
    assert "--pids-limit" in capsys.readouterr().out


TOKENS = ["-d", "--rm", "-e", "A=1", "-eB=2", "-e=C", "-it", "-dq", "--name", "x", "busybox", "ls",
          "-l", "--", "-", "-p", "80", "--cpus", "1", "-1", "-h", "--env=D", "--no-trunc", "-a",
          "-f", "web", "-n", "2", "--filter", "a=b", "--pull", "never", "--subnet", "-q", "-H", "h"]


def test_random_command_lines_agree_with_argparse(capsys: pytest.CaptureFixture[str]) -> None:
    import random

    rng = random.Random(6)
    answered = 0
    for _ in range(1500):
        command = rng.choice([["run"], ["rm"], ["ps"], ["port"], ["images"], ["exec"], ["kill"],
                              ["network", "create"], ["container", "ls"], ["version"]])
        argv = command + [rng.choice(TOKENS) for _ in range(rng.randrange(6))]
        fast = fast_result(argv)
        if fast is None:
            continue
        slow = argparse_result(argv)
        assert slow is not None and comparable(fast) == comparable(slow), argv
        answered += 1
    capsys.readouterr()
    assert answered > 200  # the comparison covered the fast path, not only its refusals
