"""Nothing networking leaks: many run/rm cycles, and a daemon SIGKILLed with networked
containers running, restarted, and its containers removed.

Only what belongs to the test's daemon is compared (its bridges, subnets, networks and
containers, see e2e_net_helpers.Scope): other engines may be busy on the same host."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from engine.testing.daemon import Daemon

from .conftest import start_engine, stop_engine
from .e2e_net_helpers import HTTPD, Scope, diff, snapshot, wait_http

CYCLES = 100
WORKERS = 4  # concurrent clients: also exercises concurrent CNI ADD/DEL on one bridge
# About 35 s on an idle 2-core host. How long they take is not asserted: a test must not
# assert speed on a machine shared with other runs (the benchmarks measure it).


def _cycle(d: Daemon, network: str, scope: Scope) -> None:
    with d.client() as c:
        cid = c.call("container.create", {"image": "busybox", "network": network,
                                          "publish": ["80"], "cmd": ["sleep", "1000"]})["Id"]
        scope.container_ids.add(cid)
        c.call("container.start", id=cid)
        c.call("container.remove", id=cid, force=True)


def test_hundred_run_rm_cycles_leave_no_trace(runc_engine: Daemon) -> None:
    d = runc_engine
    d.call("network.create", name="e2ecyc")
    scope = Scope()
    scope.learn(d)
    # A warm-up: CNI's shared base chains (CNI-HOSTPORT-*, CNI-FORWARD) appear on first use
    # and stay by design; everything per container must go.
    _cycle(d, "e2ecyc", scope)
    before = snapshot(d, scope)
    with ThreadPoolExecutor(WORKERS) as pool:
        list(pool.map(lambda _: _cycle(d, "e2ecyc", scope), range(CYCLES)))
    assert d.call("container.list", all=True) == []
    assert len(scope.container_ids) == CYCLES + 1
    assert diff(before, snapshot(d, scope)) == {}


def test_sigkill_of_the_daemon_then_restart_and_removal_leave_no_trace(
    busybox_archive: Path, host_guard: None
) -> None:
    d = start_engine(busybox_archive, "runc")
    try:
        d.call("network.create", name="e2ekill")
        scope = Scope()
        scope.learn(d)
        _cycle(d, "e2ekill", scope)
        before = snapshot(d, scope)
        ports = []
        with d.client() as c:
            for i, net in enumerate(["e2ekill", "e2ekill", "none"]):
                cid = c.call("container.create", {
                    "image": "busybox", "network": net, "publish": ["80"] if net != "none" else [],
                    "cmd": ["sh", "-c", HTTPD.format(text=f"c{i}", port=80)]})["Id"]
                scope.container_ids.add(cid)
                c.call("container.start", id=cid)
                if net != "none":
                    ports.append(c.call("container.inspect", id=cid)["NetworkSettings"]["Ports"]["80/tcp"][0]["HostPort"])
        for i, port in enumerate(ports):
            assert wait_http(f"http://127.0.0.1:{port}/") == f"c{i}\n"
        d.kill9()
        # The containers and their networking outlive the daemon ...
        for i, port in enumerate(ports):
            assert wait_http(f"http://127.0.0.1:{port}/", seconds=5) == f"c{i}\n"
        d.start()
        # ... are adopted again with their networking intact (start-up reconcile keeps it) ...
        running = d.call("container.list")
        assert len(running) == 3
        for i, port in enumerate(ports):
            assert wait_http(f"http://127.0.0.1:{port}/", seconds=5) == f"c{i}\n"
        # ... and removing them leaves the host as it was.
        for ctr in running:
            d.call("container.remove", id=ctr["Id"], force=True)
        assert diff(before, snapshot(d, scope)) == {}
    finally:
        stop_engine(d)


def test_restart_reconciles_networking_of_containers_that_died_meanwhile(
    busybox_archive: Path, host_guard: None
) -> None:
    d = start_engine(busybox_archive, "runc")
    try:
        d.call("network.create", name="e2edead")
        scope = Scope()
        scope.learn(d)
        _cycle(d, "e2edead", scope)
        before = snapshot(d, scope)
        with d.client() as c:
            cid = c.call("container.create", {"image": "busybox", "network": "e2edead",
                                              "publish": ["80"], "cmd": ["sleep", "1000"]})["Id"]
            scope.container_ids.add(cid)
            c.call("container.start", id=cid)
            pid = c.call("container.inspect", id=cid)["State"]["Pid"]
        d.kill9()
        import os
        import signal

        os.kill(pid, signal.SIGKILL)  # dies while nobody watches
        d.start()
        deadline = time.monotonic() + 10
        while d.call("container.inspect", id=cid)["State"]["Status"] != "exited":
            assert time.monotonic() < deadline, "the dead container was not noticed"
            time.sleep(0.05)
        assert d.call("container.inspect", id=cid)["NetworkSettings"]["IPAddress"] == ""
        # the exit is told first; the teardown follows within moments
        while (left := diff(before, snapshot(d, scope))) != {}:
            assert time.monotonic() < deadline + 5, left
            time.sleep(0.1)
    finally:
        stop_engine(d)
