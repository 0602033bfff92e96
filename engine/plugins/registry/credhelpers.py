"""Registry credentials from the daemon's docker-style auth file and docker's credential
helpers.

A host named in the file's ``credHelpers`` (or, for any other host, its ``credsStore``) gets
its credentials from the program ``docker-credential-NAME`` on the daemon's ``PATH``, through
docker's helper protocol: ``docker-credential-NAME get`` reads the server (``HOST[:PORT]``,
``https://index.docker.io/v1/`` for Docker Hub) on stdin and prints
``{"ServerURL": …, "Username": …, "Secret": …}``; a helper that has nothing for the server
exits non-zero printing ``credentials not found in native keychain``, which means anonymous
access. Without a helper in charge, the file's ``auths`` entry answers.

``engctl login``/``logout`` go to the same helper (``store`` with that JSON on stdin,
``erase`` with the server), as docker's do; without a helper, to ``auths``.

Helpers run through ``trio.run_process`` under a time limit (a hung helper is killed and the
pull fails with a message naming it); the file is read in a worker thread.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import attrs
import trio

from engine.errors import InvalidArgument, Unavailable
from engine.images import auth_config
from engine.plugin import RegistryCredentials

HELPER_PREFIX = "docker-credential-"
HELPER_TIMEOUT = 10.0  # seconds; a helper asking a keychain answers well within this
_NOT_FOUND = "credentials not found"
_IDENTITY_TOKEN_USER = "<token>"  # docker's marker for an OAuth identity token
_MAX_OUTPUT = 64 * 1024


@attrs.frozen
class DockerConfigCredentials:
    """``engine.plugin.CredentialSource`` for the daemon's auth file (see the module
    docstring)."""

    path: Path
    helper_timeout: float = HELPER_TIMEOUT
    name: str = "docker-config"

    async def get(self, host: str) -> RegistryCredentials | None:
        def from_file() -> tuple[str | None, tuple[str, str] | None]:
            helper = auth_config.credential_helper(self.path, host)
            return helper, None if helper else auth_config.lookup(self.path, host)

        helper, stored = await trio.to_thread.run_sync(from_file)
        if helper is not None:
            server = auth_config.auth_key(host)
            with helper_deadline(helper, "get", server, self.helper_timeout):
                return await helper_get(helper, server, self.path)
        return RegistryCredentials(*stored) if stored else None


async def helper_get(helper: str, server: str, config: Path) -> RegistryCredentials | None:
    """``docker-credential-HELPER get`` for ``server``; None when it has no credentials.
    The caller bounds the time (``helper_deadline``)."""
    out = await _run_helper(helper, "get", server.encode(), server, config)
    return None if out is None else _parse_answer(out, HELPER_PREFIX + helper, server)


async def store_login(path: Path, host: str, username: str, password: str) -> None:
    """``engctl login``: into the helper in charge of ``host`` (``docker-credential-NAME
    store``, as docker does), else into the file's ``auths``."""
    helper = await trio.to_thread.run_sync(auth_config.credential_helper, path, host)
    if helper is None:
        await trio.to_thread.run_sync(auth_config.store_auth, path, host, username, password)
        return
    server = auth_config.auth_key(host)
    doc = {"ServerURL": server, "Username": username, "Secret": password}
    with helper_deadline(helper, "store", server, HELPER_TIMEOUT):
        await _run_helper(helper, "store", json.dumps(doc).encode(), server, path)


async def erase_login(path: Path, host: str) -> bool:
    """``engctl logout``: False when there was nothing stored for ``host``."""
    helper = await trio.to_thread.run_sync(auth_config.credential_helper, path, host)
    if helper is None:
        return await trio.to_thread.run_sync(auth_config.remove_auth, path, host)
    server = auth_config.auth_key(host)
    with helper_deadline(helper, "erase", server, HELPER_TIMEOUT):
        return await _run_helper(helper, "erase", server.encode(), server, path) is not None


@contextmanager
def helper_deadline(helper: str, action: str, server: str, seconds: float) -> Iterator[None]:
    """Bound a helper call; past ``seconds`` the helper is killed (``run_process`` does it
    when cancelled) and the call fails with ``Unavailable`` naming the helper."""
    try:
        with trio.fail_after(seconds):
            yield
    except trio.TooSlowError:
        raise Unavailable(
            f"credential helper {HELPER_PREFIX}{helper} did not answer {action} for {server} "
            f"within {seconds:g} s; it was stopped"
        ) from None


async def _run_helper(
    helper: str, action: str, stdin: bytes, server: str, config: Path
) -> str | None:
    """Run ``docker-credential-HELPER ACTION``: its output, or None for "credentials not
    found"."""
    program = HELPER_PREFIX + helper
    path = await trio.to_thread.run_sync(shutil.which, program)
    if path is None:
        raise Unavailable(
            f"credential helper {program} (named in {config}) is not on the daemon's PATH; "
            "install it or remove it from credHelpers/credsStore"
        )
    result = await trio.run_process(
        [path, action], stdin=stdin, capture_stdout=True, capture_stderr=True, check=False
    )
    out = result.stdout[:_MAX_OUTPUT].decode(errors="replace").strip()
    if result.returncode == 0:
        return out
    if _NOT_FOUND in out.lower():
        return None
    err = result.stderr[:_MAX_OUTPUT].decode(errors="replace").strip()
    raise Unavailable(
        f"credential helper {program} failed to {action} for {server} "
        f"(exit {result.returncode}): {out or err or 'no message'}"
    )


def _parse_answer(out: str, program: str, server: str) -> RegistryCredentials | None:
    try:
        doc = json.loads(out)
        username, secret = doc["Username"], doc["Secret"]
    except (ValueError, TypeError, KeyError):
        raise Unavailable(
            f"credential helper {program} answered for {server} with something other than "
            '{"ServerURL", "Username", "Secret"} JSON'
        ) from None
    if not isinstance(username, str) or not isinstance(secret, str):
        raise Unavailable(f"credential helper {program}: Username and Secret must be strings")
    if username == _IDENTITY_TOKEN_USER:
        raise InvalidArgument(
            f"credential helper {program} holds an identity token for {server}; identity "
            "tokens (OAuth refresh tokens) are not supported: store a user name and password"
        )
    if not username and not secret:
        return None
    return RegistryCredentials(username, secret)
