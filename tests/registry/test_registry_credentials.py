"""The daemon's credentials file and docker's credential helpers (real helper scripts of the
docker-credential-NAME protocol, run as processes)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import trio

from engine.errors import InvalidArgument, Unavailable
from engine.images import auth_config
from engine.plugin import RegistryCredentials
from engine.plugins.registry.credhelpers import DockerConfigCredentials
from engine.testing.registry import write_credential_helper


@pytest.fixture
def helper_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A bin directory first on PATH, for docker-credential-* scripts."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    return bin_dir


def write_doc(path: Path, doc: dict[str, object]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))
    return path


def test_auth_file_is_per_daemon(tmp_path: Path) -> None:
    given = {"root": str(tmp_path / "root"), "config_dir": str(tmp_path / "etc")}
    assert auth_config.auth_path(given) == tmp_path / "etc" / "auth.json"
    # no config dir given: under the daemon's own root, never a host-wide file
    assert auth_config.auth_path({"root": str(tmp_path / "r2"), "config_dir": None}) == (
        tmp_path / "r2" / "auth.json"
    )
    assert auth_config.auth_path({}) == Path("/var/lib/engine/auth.json")


async def test_helpers_answer_for_their_hosts(tmp_path: Path, helper_path: Path) -> None:
    write_credential_helper(helper_path, "test", {"reg.example:5000": ("alice", "from-test")})
    write_credential_helper(helper_path, "store", {"other.example": ("bob", "from-store")})
    path = write_doc(tmp_path / "auth.json", {
        "credHelpers": {"reg.example:5000": "test"},
        "credsStore": "store",
        # ignored for hosts a helper is in charge of, as in docker
        "auths": {"reg.example:5000": {"auth": "eDp5"}, "other.example": {"auth": "eDp5"}},
    })
    source = DockerConfigCredentials(path)
    with trio.fail_after(20):
        assert await source.get("reg.example:5000") == RegistryCredentials("alice", "from-test")
        assert await source.get("other.example") == RegistryCredentials("bob", "from-store")
        assert await source.get("unknown.example") is None  # "credentials not found"
    assert (helper_path / "test.calls").read_text() == "get reg.example:5000\n"
    assert (helper_path / "store.calls").read_text() == (
        "get other.example\nget unknown.example\n"
    )


async def test_docker_hub_is_asked_by_its_docker_key(tmp_path: Path, helper_path: Path) -> None:
    write_credential_helper(helper_path, "hub", {auth_config.DOCKER_HUB_KEY: ("carol", "pw")})
    path = write_doc(tmp_path / "auth.json", {"credHelpers": {"docker.io": "hub"}})
    with trio.fail_after(20):
        creds = await DockerConfigCredentials(path).get("docker.io")
    assert creds == RegistryCredentials("carol", "pw")
    assert (helper_path / "hub.calls").read_text() == f"get {auth_config.DOCKER_HUB_KEY}\n"


async def test_auths_answer_without_a_helper(tmp_path: Path) -> None:
    path = tmp_path / "auth.json"
    auth_config.store_auth(path, "reg.example:5000", "alice", "pw")
    source = DockerConfigCredentials(path)
    assert await source.get("reg.example:5000") == RegistryCredentials("alice", "pw")
    assert await source.get("elsewhere:1") is None
    assert await DockerConfigCredentials(tmp_path / "missing.json").get("x:1") is None


async def test_helper_failures_are_clear(tmp_path: Path, helper_path: Path) -> None:
    broken = helper_path / "docker-credential-broken"
    broken.write_text("#!/bin/sh\necho 'keychain is locked'\nexit 3\n")
    broken.chmod(0o755)
    garbled = helper_path / "docker-credential-garbled"
    garbled.write_text("#!/bin/sh\necho 'not json'\n")
    garbled.chmod(0o755)
    token = helper_path / "docker-credential-token"
    token.write_text('#!/bin/sh\necho \'{"ServerURL":"h","Username":"<token>","Secret":"t"}\'\n')
    token.chmod(0o755)
    path = write_doc(tmp_path / "auth.json", {"credHelpers": {
        "a:1": "broken", "b:1": "garbled", "c:1": "absent", "d:1": "token", "e:1": "../evil",
    }})
    source = DockerConfigCredentials(path)
    with trio.fail_after(20):
        with pytest.raises(Unavailable, match=r"docker-credential-broken failed to get for a:1 .*keychain is locked"):
            await source.get("a:1")
        with pytest.raises(Unavailable, match="docker-credential-garbled answered"):
            await source.get("b:1")
        with pytest.raises(Unavailable, match="docker-credential-absent .* not on the daemon's PATH"):
            await source.get("c:1")
        with pytest.raises(InvalidArgument, match="identity token"):
            await source.get("d:1")
        with pytest.raises(InvalidArgument, match="invalid credential helper name"):
            await source.get("e:1")


async def test_a_hung_helper_is_stopped(tmp_path: Path, helper_path: Path) -> None:
    write_credential_helper(helper_path, "hang", {}, hang=True)
    path = write_doc(tmp_path / "auth.json", {"credsStore": "hang"})
    # 2 s: long enough for the helper's shell to start and name its pid on a loaded machine
    source = DockerConfigCredentials(path, helper_timeout=2)
    with trio.fail_after(20), pytest.raises(Unavailable, match=r"docker-credential-hang did not answer get for slow.example:5000 within 2 s"):
        await source.get("slow.example:5000")
    pid = int((helper_path / "hang.pid").read_text())
    with pytest.raises(ProcessLookupError):  # killed and reaped
        os.kill(pid, 0)
