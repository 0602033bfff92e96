"""Registry auth through the real clients: docker login / push / pull / logout with both
docker CLIs, and docker-py's login, push and pull with ``auth_config``, against a local
docker-registry with htpasswd. The daemon stores nothing: each request carries its
credentials (``X-Registry-Auth``) and ``/auth`` only checks them. The messages are
dockerd's (tests/dockerapi/test_versus_dockerd.py compares them side by side)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.testing.daemon import require_binary
from engine.testing.registry import Registry, push_layout, registry_server

from .conftest import Engine, EngineFactory, docker_clients

USER, PASSWORD = "alice", "secret"
PRIVATE = "private/busybox"


@pytest.fixture
def private_registry(tmp_path: Path, busybox_layout: Path) -> Iterator[Registry]:
    require_binary("htpasswd")
    with registry_server(tmp_path / "authreg", users={USER: PASSWORD}) as reg:
        push_layout(busybox_layout, "latest", reg, f"{PRIVATE}:v1", creds=(USER, PASSWORD))
        yield reg


@pytest.fixture
def engine(make_engine: EngineFactory, private_registry: Registry, busybox_archive: Path) -> Engine:
    return make_engine(registry=private_registry, load_busybox=busybox_archive)


def refused_login(reg: Registry) -> str:
    return f"Error response from daemon: login attempt to http://{reg.host}/v2/ failed with status: 401 Unauthorized\n"


@pytest.mark.parametrize("binary", docker_clients())
def test_login_push_pull_logout(engine: Engine, private_registry: Registry, binary: str) -> None:
    reg = private_registry
    target = f"{reg.host}/mine/busybox:v1"
    engine.docker("tag", "busybox:latest", target, binary=binary)

    unauthenticated = engine.docker("push", target, binary=binary, check=False)
    assert unauthenticated.returncode == 1
    assert f"The push refers to repository [{reg.host}/mine/busybox]" in unauthenticated.stdout
    assert "docker login" in unauthenticated.stderr and "engctl" not in unauthenticated.stderr

    wrong = engine.docker("login", "-u", USER, "--password-stdin", reg.host, input="nope", check=False,
                          binary=binary)
    assert (wrong.returncode, wrong.stderr) == (1, refused_login(reg))
    assert not (engine.client_config / "config.json").exists() or reg.host not in (
        engine.client_config / "config.json").read_text()

    good = engine.docker("login", "-u", USER, "--password-stdin", reg.host, input=PASSWORD, binary=binary)
    assert good.stdout.strip() == "Login Succeeded"
    saved = json.loads((engine.client_config / "config.json").read_text())
    assert reg.host in saved["auths"]

    pushed = engine.docker("push", target, binary=binary, timeout=120)
    assert pushed.stdout.startswith(f"The push refers to repository [{reg.host}/mine/busybox]\n")
    assert "v1: digest: sha256:" in pushed.stdout
    # the daemon stored nothing: the credentials came with the request
    assert not (engine.daemon.base / "etc" / "auth.json").exists()
    assert not (engine.daemon.root / "auth.json").exists()

    engine.docker("rmi", target, binary=binary)
    pulled = engine.docker("pull", f"{reg.host}/{PRIVATE}:v1", binary=binary, timeout=120)
    assert pulled.stdout.startswith(f"v1: Pulling from {PRIVATE}\n"), pulled.stdout
    assert f"Status: Downloaded newer image for {reg.host}/{PRIVATE}:v1" in pulled.stdout
    missing = engine.docker("pull", f"{reg.host}/{PRIVATE}:nosuchtag", binary=binary, check=False)
    assert (missing.returncode, missing.stderr) == (
        1, f"Error response from daemon: manifest for {reg.host}/{PRIVATE}:nosuchtag not found: "
           "manifest unknown: manifest unknown\n")

    out = engine.docker("logout", reg.host, binary=binary)
    assert out.stdout.strip() == f"Removing login credentials for {reg.host}"
    engine.docker("rmi", f"{reg.host}/{PRIVATE}:v1", binary=binary)
    denied = engine.docker("pull", f"{reg.host}/{PRIVATE}:v1", binary=binary, check=False)
    assert denied.returncode == 1 and denied.stdout == ""  # refused before any progress
    assert denied.stderr.startswith("Error response from daemon: ") and "docker login" in denied.stderr
    assert engine.docker("images", "-q", f"{reg.host}/{PRIVATE}", binary=binary).stdout == ""
    # the daemon keeps serving
    assert engine.docker("run", "--rm", "busybox", "echo", "ok", binary=binary).stdout == "ok\n"


def test_docker_py_login_push_pull_with_auth_config(engine: Engine, private_registry: Registry) -> None:
    import docker

    reg = private_registry
    auth = {"username": USER, "password": PASSWORD}
    client = engine.docker_py()
    try:
        with pytest.raises(docker.errors.APIError) as refused:
            client.login(USER, "nope", registry=reg.host, reauth=True)
        assert refused.value.status_code == 401
        assert refused.value.explanation == refused_login(reg).removeprefix("Error response from daemon: ").strip()
        assert client.login(USER, PASSWORD, registry=reg.host, reauth=True) == {
            "Status": "Login Succeeded", "IdentityToken": ""}

        repo = f"{reg.host}/py/busybox"
        assert client.images.get("busybox").tag(repo, "v2")
        lines = [json.loads(x) for x in client.images.push(repo, "v2", auth_config=auth).splitlines() if x]
        assert not [x for x in lines if "error" in x], lines
        assert lines[-1]["aux"]["Tag"] == "v2" and lines[-1]["aux"]["Digest"].startswith("sha256:")
        no_creds = [json.loads(x) for x in client.images.push(repo, "v2", auth_config={}).splitlines() if x]
        assert "error" in no_creds[-1]

        client.images.remove(f"{repo}:v2")
        image = client.images.pull(f"{reg.host}/{PRIVATE}", tag="v1", auth_config=auth)
        assert f"{reg.host}/{PRIVATE}:v1" in image.tags
        client.images.remove(f"{reg.host}/{PRIVATE}:v1")
        # a private image without credentials (a client that never logged in: docker-py
        # sends its login's credentials along): docker's error, before any progress
        stranger = engine.docker_py()
        try:
            with pytest.raises(docker.errors.APIError) as denied:
                stranger.images.pull(f"{reg.host}/{PRIVATE}", tag="v1")
        finally:
            stranger.close()
        assert denied.value.status_code == 403 and "docker login" in str(denied.value.explanation)
        with pytest.raises(docker.errors.NotFound) as missing:
            client.images.pull(f"{reg.host}/{PRIVATE}", tag="nosuchtag", auth_config=auth)
        assert "manifest for" in str(missing.value.explanation)
    finally:
        client.close()


def test_registry_auth_header_forms(engine: Engine, private_registry: Registry) -> None:
    """X-Registry-Auth as docker's clients send it: URL-safe base64 with or without padding,
    standard base64, ``auth`` (base64 user:password) instead of the two fields, an empty
    object (no credentials); garbage is a 400."""
    import base64

    import httpx

    reg = private_registry
    transport = httpx.HTTPTransport(uds=str(engine.docker_socket))

    def pull(header: str | None) -> httpx.Response:
        headers = {"X-Registry-Auth": header} if header is not None else {}
        with httpx.Client(transport=transport, base_url="http://docker", timeout=60) as http:
            return http.post("/v1.41/images/create", params={"fromImage": f"{reg.host}/{PRIVATE}", "tag": "v1"},
                             headers=headers)

    doc = {"username": USER, "password": PASSWORD, "serveraddress": reg.host, "email": ""}
    raw = json.dumps(doc).encode()
    basic = {"auth": base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode(), "serveraddress": reg.host}
    for header in (base64.urlsafe_b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode().rstrip("="),
                   base64.b64encode(raw).decode(), base64.urlsafe_b64encode(json.dumps(basic).encode()).decode()):
        answer = pull(header)
        assert answer.status_code == 200 and b'"error"' not in answer.content, (header, answer.content)
        assert b"Status: " in answer.content
    for header in (None, base64.urlsafe_b64encode(b"{}").decode()):
        assert pull(header).status_code == 403
    garbage = pull("!!not base64!!")
    assert garbage.status_code == 400 and "X-Registry-Auth" in garbage.json()["message"]
