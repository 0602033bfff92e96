"""container.run: create and start in one round trip (docker run), against a real engined
with real runc/crun, conmon and overlay mounts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import Any

import pytest

from engine.cli import main
from engine.errors import EngineError, NotFound
from engine.testing.daemon import Daemon, record_rpc_methods

from .conftest import collect_output


def run(d: Daemon, **params: Any) -> tuple[dict[str, Any], bytes, bytes]:
    """container.run attached: its result, stdout and stderr."""
    with d.client() as c:
        stream = c.stream("container.run", {"image": "busybox", **params})
        out, err = collect_output(stream)
        return stream.result, out, err


def names_of_all(d: Daemon) -> list[str]:
    return [name for row in d.call("container.list", all=True) for name in row["Names"]]


def test_attached_run_streams_the_output_and_returns_the_exit_code(engine: Daemon) -> None:
    result, out, err = run(engine, name="talker", cmd=["sh", "-c", "echo hello; echo oops >&2; exit 3"])
    assert (out, err) == (b"hello\n", b"oops\n")
    assert result["ExitCode"] == 3 and result["OOMKilled"] is False
    info = engine.call("container.inspect", id="talker")
    assert info["Id"] == result["Id"]
    assert info["State"]["Status"] == "exited" and info["State"]["ExitCode"] == 3


def test_auto_remove_run_returns_once_the_container_is_gone(engine: Daemon) -> None:
    for round_ in range(2):  # the second round reuses the name at once
        result, out, _ = run(engine, name="once", auto_remove=True,
                             cmd=["sh", "-c", f"echo round {round_}; exit {round_}"])
        assert out == f"round {round_}\n".encode() and result["ExitCode"] == round_
        assert "once" not in names_of_all(engine)
        with pytest.raises(NotFound):
            engine.call("container.inspect", id=result["Id"])


def test_detached_run_returns_a_running_container(engine: Daemon) -> None:
    result = engine.call("container.run", image="busybox", name="bg", detach=True, cmd=["sleep", "30"])
    assert result == {"Id": result["Id"], "Warnings": []}
    state = engine.call("container.inspect", id=result["Id"])["State"]
    assert state["Running"] is True and state["Pid"] > 0
    engine.call("container.remove", id="bg", force=True)


@pytest.mark.parametrize("detach", [False, True])
def test_a_missing_command_is_127_and_run_rm_leaves_nothing(engine: Daemon, detach: bool) -> None:
    with engine.client() as c, pytest.raises(EngineError) as failed:
        list(c.stream("container.run", image="busybox", name="gone", auto_remove=True,
                      detach=detach, cmd=["/no/such/binary"]))
    error = failed.value
    assert "/no/such/binary" in error.message or "no such file" in error.message.lower()
    assert error.details["exit_code"] == 127
    assert "gone" not in names_of_all(engine)
    with pytest.raises(NotFound):
        engine.call("container.inspect", id=error.details["container_id"])


def test_a_missing_command_without_rm_keeps_the_container(engine: Daemon) -> None:
    with engine.client() as c, pytest.raises(EngineError) as failed:
        list(c.stream("container.run", image="busybox", name="kept", cmd=["/no/such/binary"]))
    cid = failed.value.details["container_id"]
    assert failed.value.details["exit_code"] == 127
    # our model: a container whose first start failed was never started, so it stays created
    state = engine.call("container.inspect", id="kept")["State"]
    assert engine.call("container.inspect", id="kept")["Id"] == cid
    assert state["Status"] == "created" and state["ExitCode"] == 127


def test_a_missing_image_says_so_and_creates_nothing(engine: Daemon) -> None:
    for method in ("container.run", "container.create"):
        with pytest.raises(NotFound) as failed:
            engine.call(method, image="no-such/image:1", name="never", cmd=["true"])
        assert failed.value.details == {"missing_image": "no-such/image:1"}
        assert "no such image" in failed.value.message
    assert "never" not in names_of_all(engine)


def test_run_params_are_described(engine: Daemon) -> None:
    methods = {m["name"]: m for m in engine.call("rpc.describe")["methods"]}
    run_params = methods["container.run"]["params"]
    assert run_params["detach"] == "bool" and run_params["image"] == "str"
    assert set(methods["container.create"]["params"]) == set(run_params) - {"detach", "detach_keys"}


def test_engctl_run_exit_codes(engine: Daemon, monkeypatch: pytest.MonkeyPatch,
                               capsys: pytest.CaptureFixture[str]) -> None:
    calls = record_rpc_methods(monkeypatch, engine.host)
    assert main.run(["run", "--rm", "--name", "cli", "busybox", "sh", "-c", "echo hi; exit 7"]) == 7
    assert capsys.readouterr().out == "hi\n"
    assert main.run(["run", "--rm", "--name", "cli", "busybox", "/no/such/binary"]) == 127
    assert main.run(["run", "-d", "--rm", "--name", "cli", "busybox", "/no/such/binary"]) == 127
    assert calls == ["container.run"] * 3  # no inspect or remove round trips afterwards
    assert "cli" not in names_of_all(engine)
    assert main.run(["run", "--name", "cli", "busybox", "/no/such/binary"]) == 127
    assert engine.call("container.inspect", id="cli")["State"]["ExitCode"] == 127


def test_engctl_run_ctrl_c_cancels_the_stream_and_exits_130(engine: Daemon) -> None:
    engctl = [sys.executable, "-c", "from engine.cli.main import main; main()"]
    env = {**os.environ, "ENGINE_HOST": engine.host}
    proc = subprocess.Popen([*engctl, "run", "--name", "ticker", "busybox", "sh", "-c", "echo ready; sleep 30"],
                            stdout=subprocess.PIPE, env=env)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # docker without a TTY: leaving the output does not stop the container
    assert engine.call("container.inspect", id="ticker")["State"]["Running"] is True
