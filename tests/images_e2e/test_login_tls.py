"""engctl login/logout against an htpasswd registry; --insecure-registry and certs.d for
plain-HTTP and TLS registries."""

from __future__ import annotations

import base64
import json
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.testing.daemon import Daemon
from engine.testing.registry import Registry, install_ca, push_layout, registry_server

from .conftest import BUSYBOX_TAG, DaemonFactory, Layouts
from .e2e_helpers import engctl, ok

USERS = {"alice": "s3cret-pass"}


@pytest.fixture
def auth_registry(tmp_path: Path, layouts: Layouts) -> Iterator[Registry]:
    with registry_server(tmp_path, users=USERS) as reg:
        push_layout(layouts.busybox, "latest", reg, BUSYBOX_TAG, creds=("alice", USERS["alice"]))
        yield reg


@pytest.fixture
def tls_registry(tmp_path: Path, layouts: Layouts) -> Iterator[Registry]:
    with registry_server(tmp_path, tls=True) as reg:
        push_layout(layouts.busybox, "latest", reg, BUSYBOX_TAG)
        yield reg


def auth_file(daemon: Daemon) -> Path:
    return daemon.base / "etc" / "auth.json"  # <config-dir>/auth.json


def test_login_pull_logout(make_daemon: DaemonFactory, auth_registry: Registry) -> None:
    host = auth_registry.host
    daemon = make_daemon("--insecure-registry", host)
    ref = f"{host}/{BUSYBOX_TAG}"

    before = engctl(daemon, "pull", ref)
    assert before.code == 125
    assert "access denied" in before.err and f"engctl login {host}" in before.err

    wrong = engctl(daemon, "login", "-u", "alice", "--password-stdin", host, input="nope\n")
    assert wrong.code == 125 and "refused the credentials" in wrong.err
    assert not auth_file(daemon).exists(), "refused credentials are not stored"

    out = ok(daemon, "login", "-u", "alice", "--password-stdin", host,
             input=USERS["alice"] + "\n")
    assert out.strip() == "Login Succeeded"
    path = auth_file(daemon)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    doc = json.loads(path.read_text())
    assert doc == {"auths": {host: {"auth": base64.b64encode(b"alice:s3cret-pass").decode()}}}

    ok(daemon, "pull", "-q", ref)
    assert ok(daemon, "images", "-q") != ""

    assert ok(daemon, "logout", host).strip() == f"Removing login credentials for {host}"
    assert json.loads(path.read_text()) == {"auths": {}}
    assert ok(daemon, "logout", host).strip() == f"Not logged in to {host}"
    after = engctl(daemon, "pull", ref)
    assert after.code == 125 and "access denied" in after.err, "no cached login survives"


def test_login_keeps_other_keys_of_a_docker_config(
    make_daemon: DaemonFactory, auth_registry: Registry
) -> None:
    host = auth_registry.host

    def existing_config(d: Daemon) -> None:
        path = auth_file(d)
        path.parent.mkdir(parents=True, exist_ok=True)
        # a helper for another host only: this host's login still goes to auths
        path.write_text(json.dumps({"auths": {"other.example:5000": {"auth": "eDp5"}},
                                    "credHelpers": {"other.example:6000": "none"},
                                    "psFormat": "table {{.ID}}"}))

    daemon = make_daemon("--insecure-registry", host, prepare=existing_config)
    ok(daemon, "login", "-u", "alice", "-p", USERS["alice"], f"http://{host}/v2/")
    doc = json.loads(auth_file(daemon).read_text())
    assert doc["credHelpers"] == {"other.example:6000": "none"}
    assert doc["psFormat"] == "table {{.ID}}"
    assert set(doc["auths"]) == {"other.example:5000", host}


def test_plain_http_registry_needs_insecure_registry(
    make_daemon: DaemonFactory, seeded: Registry
) -> None:
    ref = f"{seeded.host}/{BUSYBOX_TAG}"
    strict = make_daemon()
    refused = engctl(strict, "pull", ref)
    assert refused.code == 125
    assert "insecure-registries" in refused.err or "insecure-registry" in refused.err
    assert strict.call("image.list") == []

    allowed = make_daemon("--insecure-registry", seeded.host)
    ok(allowed, "pull", "-q", ref)


def test_tls_registry_with_ca_in_certs_d(
    make_daemon: DaemonFactory, tls_registry: Registry, layouts: Layouts
) -> None:
    host = tls_registry.host
    ref = f"{host}/{BUSYBOX_TAG}"
    assert tls_registry.tls is not None
    ca = tls_registry.tls.ca_pem

    untrusted = make_daemon()
    refused = engctl(untrusted, "pull", ref)
    assert refused.code == 125
    assert f"certs.d/{host}/ca.crt" in refused.err

    trusted = make_daemon(prepare=lambda d: install_ca(d.base / "etc" / "certs.d", host, ca))
    ok(trusted, "pull", "-q", ref)
    (info,) = json.loads(ok(trusted, "image", "inspect", ref))
    assert info["Id"] == layouts.busybox_built.id

    # push back over TLS as well
    ok(trusted, "tag", ref, f"{host}/copy/busybox:1")
    assert ok(trusted, "push", "-q", f"{host}/copy/busybox:1").strip() == f"{host}/copy/busybox:1"

    insecure = make_daemon("--insecure-registry", host)  # TLS, not verified
    ok(insecure, "pull", "-q", ref)


def test_first_push_after_start_and_login(
    make_daemon: DaemonFactory, auth_registry: Registry, layouts: Layouts
) -> None:
    """Issue 16 item 8: the first push of a fresh daemon after engctl login was refused
    ("access denied" on a blob) against an htpasswd registry; the second one worked. The
    blobs are pushed concurrently, and a request sent before another task had answered the
    Basic challenge was taken for refused credentials."""
    host = auth_registry.host
    daemon = make_daemon("--insecure-registry", host)
    ok(daemon, "load", "-i", str(layouts.multilayer))  # three blobs: pushed concurrently
    ok(daemon, "login", "-u", "alice", "--password-stdin", host, input=USERS["alice"] + "\n")
    target = f"{host}/pushed/multi:first"
    ok(daemon, "tag", "localhost/test/multilayer:latest", target)
    out = ok(daemon, "push", target).splitlines()
    assert out[-1] == f"{target}: digest: {layouts.multilayer_built.manifest.digest}"
