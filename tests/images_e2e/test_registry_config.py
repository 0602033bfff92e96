"""Registry settings and credentials of a running daemon: SIGHUP reloads insecure
registries for the next pull; docker credential helpers answer for a registry; each daemon
keeps its own credentials file."""

from __future__ import annotations

import base64
import json
import os
import signal
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.testing.daemon import Daemon
from engine.testing.registry import Registry, push_layout, registry_server, write_credential_helper

from .conftest import BUSYBOX_TAG, DaemonFactory, Layouts
from .e2e_helpers import Result, engctl, ok

USERS = {"alice": "s3cret-pass"}


@pytest.fixture
def auth_registry(tmp_path: Path, layouts: Layouts) -> Iterator[Registry]:
    with registry_server(tmp_path, users=USERS) as reg:
        push_layout(layouts.busybox, "latest", reg, BUSYBOX_TAG, creds=("alice", USERS["alice"]))
        yield reg


def sighup_and_wait(daemon: Daemon) -> dict[str, object]:
    """Send SIGHUP and wait for the daemon's reload event; its attributes."""
    with daemon.client() as c:
        events = c.stream("system.events", filters={"type": ["daemon"], "event": ["reload"]})
        deadline = time.monotonic() + 5
        while daemon.call("system.info")["EventSubscribers"] != 1:
            assert time.monotonic() < deadline, "the event subscription did not register"
            time.sleep(0.02)
        assert daemon.proc is not None
        daemon.proc.send_signal(signal.SIGHUP)
        event = next(iter(events))
    return event["Actor"]["Attributes"]  # type: ignore[no-any-return]


def test_sighup_adding_an_insecure_registry_makes_the_next_pull_work(
    make_daemon: DaemonFactory, seeded: Registry
) -> None:
    ref = f"{seeded.host}/{BUSYBOX_TAG}"
    daemon = Daemon(config={"insecure-registries": []})
    try:
        daemon.start()
        refused = engctl(daemon, "pull", ref)
        assert refused.code == 125 and "insecure-registries" in refused.err

        (daemon.base / "daemon.json").write_text(
            json.dumps({"insecure-registries": [seeded.host], "max-concurrent-downloads": 1})
        )
        changed = sighup_and_wait(daemon)["changed"]
        assert changed == ["insecure_registries", "max_concurrent_downloads"]
        ok(daemon, "pull", "-q", ref)
        assert len(daemon.call("image.list")) == 1

        (daemon.base / "daemon.json").write_text(json.dumps({"insecure-registries": []}))
        sighup_and_wait(daemon)
        again = engctl(daemon, "pull", ref)
        assert again.code == 125 and "insecure-registries" in again.err, "removed again"
    finally:
        daemon.cleanup()


def test_pull_with_a_credential_helper(auth_registry: Registry, tmp_path: Path) -> None:
    """docker-credential-test (a real helper script on the daemon's PATH) holds the
    password of the htpasswd registry; the daemon's auth file names it in credHelpers."""
    host = auth_registry.host
    bin_dir = tmp_path / "helpers"
    ref = f"{host}/{BUSYBOX_TAG}"

    def pull_with(answers: dict[str, tuple[str, str]]) -> tuple[Daemon, Result]:
        write_credential_helper(bin_dir, "test", answers)
        daemon = Daemon(extra_args=["--insecure-registry", host],
                        env={"PATH": f"{bin_dir}:{os.environ['PATH']}"})
        path = daemon.base / "etc" / "auth.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps({"credHelpers": {host: "test"}}))
        try:
            daemon.start()
            return daemon, engctl(daemon, "pull", "-q", ref)
        except BaseException:
            daemon.cleanup()
            raise

    daemon, pulled = pull_with({host: ("alice", USERS["alice"])})
    try:
        assert pulled.code == 0, pulled.err
        assert len(daemon.call("image.list")) == 1
        assert (bin_dir / "test.calls").read_text().splitlines()[0] == f"get {host}"

        # login and logout go to the helper in charge, as docker's do
        ok(daemon, "login", "-u", "alice", "--password-stdin", host, input=USERS["alice"] + "\n")
        ok(daemon, "logout", host)
        calls = (bin_dir / "test.calls").read_text().splitlines()
        stored = json.loads(calls[-2].removeprefix("store "))
        assert stored == {"ServerURL": host, "Username": "alice", "Secret": USERS["alice"]}
        assert calls[-1] == f"erase {host}"
        auth_file = json.loads((daemon.base / "etc" / "auth.json").read_text())
        assert auth_file == {"credHelpers": {host: "test"}}, "nothing written to auths"
    finally:
        daemon.cleanup()

    # the helper has nothing for this host ("credentials not found"): anonymous, refused
    daemon, refused = pull_with({"other.example:5000": ("x", "y")})
    try:
        assert refused.code == 125 and "access denied" in refused.err
    finally:
        daemon.cleanup()


class DaemonWithoutConfigDir(Daemon):
    """A daemon started without --config-dir (the test helper always gives one)."""

    def args(self) -> list[str]:
        args = super().args()
        i = args.index("--config-dir")
        return args[:i] + args[i + 2:]


def test_credentials_stay_with_the_daemon(auth_registry: Registry, make_daemon: DaemonFactory
                                          ) -> None:
    """Without --config-dir, engctl login stores under the daemon's --root (0600); another
    daemon does not see the login."""
    host = auth_registry.host
    ref = f"{host}/{BUSYBOX_TAG}"
    first = DaemonWithoutConfigDir(extra_args=["--insecure-registry", host])
    try:
        first.start()
        ok(first, "login", "-u", "alice", "--password-stdin", host, input=USERS["alice"] + "\n")
        path = first.root / "auth.json"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        expected = base64.b64encode(f"alice:{USERS['alice']}".encode()).decode()
        assert json.loads(path.read_text()) == {"auths": {host: {"auth": expected}}}
        ok(first, "pull", "-q", ref)

        other = make_daemon("--insecure-registry", host)
        refused = engctl(other, "pull", ref)
        assert refused.code == 125 and "access denied" in refused.err
    finally:
        first.cleanup()
