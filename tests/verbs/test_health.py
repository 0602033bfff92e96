"""Health checks: --health-* flags and the image's HEALTHCHECK, State.Health in inspect,
the status in ps and its filter, health_status events in order, and probes that stop with
the container."""

from __future__ import annotations

import os
import subprocess
import time
from typing import Any

from engine.testing.daemon import Daemon
from tests.verbs.conftest import ENGCTL, engctl, exec_out, wait_for

FLAGS = ["--health-cmd", "cat /tmp/healthy", "--health-interval", "200ms", "--health-timeout", "2s",
         "--health-retries", "2"]


def health(d: Daemon, cid: str) -> dict[str, Any]:
    return d.call("container.inspect", id=cid)["State"].get("Health") or {}


def events(d: Daemon, cid: str, since: float) -> list[str]:
    with d.client() as c:
        stream = c.stream("system.events", since=since, until=time.time(),
                          filters={"container": [cid], "event": ["health_status"]})
        return [e["Action"] for e in stream]


def test_health_flips_unhealthy_and_back_with_events_in_order(engine: Daemon) -> None:
    since = time.time() - 1
    cid = engctl(engine, "run", "-d", *FLAGS, "busybox", "sh", "-c",
                 "touch /tmp/healthy; sleep 1000").stdout.decode().strip()
    wait_for(lambda: health(engine, cid).get("Status") == "healthy", what="healthy")
    assert "(healthy)" in engctl(engine, "ps", "--filter", "health=healthy").stdout.decode()
    exec_out(engine, cid, "rm", "/tmp/healthy")
    state = wait_for(lambda: (h := health(engine, cid)).get("Status") == "unhealthy" and h, what="unhealthy")
    assert state["FailingStreak"] >= 2
    last = state["Log"][-1]
    assert last["ExitCode"] != 0 and "No such file" in last["Output"]
    assert len(state["Log"]) <= 5
    ps = engctl(engine, "ps", "--filter", "health=unhealthy", "--format", "{{.Names}} {{.Status}}").stdout.decode()
    assert "(unhealthy)" in ps
    assert engctl(engine, "ps", "-q", "--filter", "health=healthy").stdout == b""
    exec_out(engine, cid, "touch", "/tmp/healthy")
    state = wait_for(lambda: (h := health(engine, cid)).get("Status") == "healthy" and h, what="healthy again")
    assert state["FailingStreak"] == 0 and state["Log"][-1]["ExitCode"] == 0
    assert events(engine, cid, since) == ["health_status: healthy", "health_status: unhealthy",
                                          "health_status: healthy"]
    # probes stop with the container: no exec session outlives it
    engctl(engine, "stop", "-t", "1", cid)
    time.sleep(0.6)
    seen = events(engine, cid, since)
    time.sleep(0.6)
    assert events(engine, cid, since) == seen
    with engine.client() as c:
        execs = [e["Action"] for e in c.stream("system.events", since=since, until=time.time(),
                                                filters={"container": [cid]})]
    assert execs.count("exec_start") == execs.count("exec_die") > 3


def test_starting_then_unhealthy_and_timeouts(engine: Daemon) -> None:
    cid = engctl(engine, "run", "-d", "--health-cmd", "sleep 5", "--health-interval", "200ms",
                 "--health-timeout", "300ms", "--health-retries", "1", "--health-start-period", "5s",
                 "busybox", "sleep", "1000").stdout.decode().strip()
    # within the start period (5 s: the two checks below, an engctl start-up among them, must
    # fit in it on a loaded machine)
    assert health(engine, cid)["Status"] == "starting"
    assert "(health: starting)" in engctl(engine, "ps").stdout.decode()
    state = wait_for(lambda: (h := health(engine, cid)).get("Status") == "unhealthy" and h,
                     timeout=20, what="unhealthy after timeouts")
    assert state["Log"][-1]["ExitCode"] == -1 and "exceeded timeout" in state["Log"][-1]["Output"]
    config = engine.call("container.inspect", id=cid)["Config"]["Healthcheck"]
    assert config["Test"] == ["CMD-SHELL", "sleep 5"] and config["Retries"] == 1
    assert config["Interval"] == 200_000_000


def test_no_healthcheck_and_bad_flags(engine: Daemon) -> None:
    cid = engctl(engine, "run", "-d", "--no-healthcheck", "busybox", "sleep", "1000").stdout.decode().strip()
    assert "Health" not in engine.call("container.inspect", id=cid)["State"]
    assert "health" not in engctl(engine, "ps").stdout.decode()
    assert engctl(engine, "ps", "-q", "--filter", "health=none").stdout.decode().strip() == cid[:12]
    bad = engctl(engine, "run", "-d", "--health-interval", "ten", "--health-cmd", "true", "busybox",
                 check=False)
    assert bad.returncode == 125 and b"--health-interval" in bad.stderr
    both = engctl(engine, "create", "--no-healthcheck", "--health-cmd", "true", "busybox", check=False)
    assert both.returncode == 125 and b"conflicts" in both.stderr


def test_wait_conditions(engine: Daemon) -> None:
    # the container exits when the test says so, after the waiter was started; a waiter that
    # asked only after that exit waits for the next one, which a second start gives it
    cid = engctl(engine, "run", "-d", "busybox", "sh", "-c",
                 "until [ -e /tmp/go ]; do sleep 0.1; done; exit 3").stdout.decode().strip()
    waiter = subprocess.Popen([*ENGCTL, "wait", "--condition", "next-exit", cid], stdout=subprocess.PIPE,
                              env={**os.environ, "ENGINE_HOST": engine.host})
    try:
        assert exec_out(engine, cid, "touch", "/tmp/go")[0] == 0
        try:
            waited, _ = waiter.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            engctl(engine, "start", cid)
            waited, _ = waiter.communicate(timeout=60)
    finally:
        waiter.kill()
    assert waited.strip() == b"3"
    created = engctl(engine, "create", "busybox", "sh", "-c", "exit 4").stdout.decode().strip()
    assert engctl(engine, "wait", created).stdout.strip() == b"0"  # not running already
    auto = engctl(engine, "run", "-d", "--rm", "busybox", "sh", "-c", "sleep 2; exit 5").stdout.decode().strip()
    assert engctl(engine, "wait", "--condition", "removed", auto).stdout.strip() == b"5"
    bad = engctl(engine, "wait", "--condition", "whenever", cid, check=False)
    assert bad.returncode == 125


def test_image_healthcheck_is_used_and_flags_override_it(engine: Daemon, tmp_path: Any) -> None:
    import attrs

    from engine.testing.images import busybox_image, write_docker_archive

    image = attrs.evolve(busybox_image("docker.io/library/checked:1"), config_extra={"Healthcheck": {
        "Test": ["CMD", "test", "-e", "/tmp/ok"], "Interval": 200_000_000, "Retries": 1}})
    archive = tmp_path / "checked.tar"
    write_docker_archive(archive, [image])
    engine.call("image.load", path=str(archive))
    cid = engctl(engine, "run", "-d", "checked:1", "sh", "-c", "touch /tmp/ok; sleep 1000").stdout.decode().strip()
    wait_for(lambda: health(engine, cid).get("Status") == "healthy", what="healthy from the image's check")
    other = engctl(engine, "run", "-d", "--health-cmd", "exit 1", "checked:1", "sh", "-c",
                   "touch /tmp/ok; sleep 1000").stdout.decode().strip()
    wait_for(lambda: health(engine, other).get("Status") == "unhealthy", what="the flag's check")
    plain = engctl(engine, "run", "-d", "--no-healthcheck", "checked:1", "sleep", "1000").stdout.decode().strip()
    assert "Health" not in engine.call("container.inspect", id=plain)["State"]
