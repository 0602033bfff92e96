"""Registry credentials in a docker-compatible ``config.json``.

The file holds ``{"auths": {"HOST[:PORT]": {"auth": base64("user:password")}}}`` and any
other keys docker writes (they are kept untouched). Docker Hub's key is
``https://index.docker.io/v1/``, as docker writes it. ``credHelpers`` (host -> NAME) and
``credsStore`` (NAME, for every other host) hand a host's credentials to docker's credential
helper ``docker-credential-NAME`` instead (``engine.plugins.registry.credhelpers``).

Where the file lives: one per daemon, never shared between daemons. It is
``<config_dir>/auth.json`` when the daemon was given a config dir (``--config-dir`` or
``config-dir`` in its config file), else ``<root>/auth.json`` (``/var/lib/engine/auth.json``
for the default ``--root``). The daemon reads and writes it (``engctl login`` goes through
the daemon), so it lives with the daemon rather than in a user's home; ``$DOCKER_CONFIG`` is
not consulted, so a user's docker credentials never leak into the engine by accident.

Writes are atomic (temp file, fsync, rename) with mode 0600. Stdlib only and synchronous:
the daemon calls it from a worker thread.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from engine.errors import InvalidArgument
from engine.store.atomic import write_json_atomic

DOCKER_HUB_KEY = "https://index.docker.io/v1/"
_HUB_ALIASES = {"docker.io", "index.docker.io", "registry-1.docker.io", DOCKER_HUB_KEY}


AUTH_FILE = "auth.json"
DEFAULT_ROOT = "/var/lib/engine"


def auth_path(config: Mapping[str, Any]) -> Path:
    """The daemon's own credentials file (see the module docstring). ``config`` is the
    plugin dict of the daemon's configuration: ``config_dir`` is None unless given."""
    if config.get("config_dir"):
        return Path(config["config_dir"]) / AUTH_FILE
    return Path(config.get("root") or DEFAULT_ROOT) / AUTH_FILE


def auth_key(host: str) -> str:
    """The key under ``auths`` for a registry host (docker's spelling for Docker Hub)."""
    bare = _bare_host(host)
    return DOCKER_HUB_KEY if bare in _HUB_ALIASES else bare


def _bare_host(key: str) -> str:
    """``https://host:port/v1/`` -> ``host:port`` (docker accepts keys with a scheme)."""
    if key == DOCKER_HUB_KEY:
        return key
    for prefix in ("https://", "http://"):
        key = key.removeprefix(prefix)
    return key.split("/", 1)[0]


def _read_doc(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_bytes())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise InvalidArgument(
            f"cannot read the registry credentials file {path}: {exc}; fix or remove it"
        ) from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("auths", {}), dict):
        raise InvalidArgument(
            f"{path} is not a docker-style config.json (expected an object with 'auths')"
        )
    return doc


def _decode(entry: Any, key: str, path: Path) -> tuple[str, str] | None:
    if not isinstance(entry, dict):
        return None
    if entry.get("username") and entry.get("password"):
        return str(entry["username"]), str(entry["password"])
    encoded = entry.get("auth")
    if not encoded:
        return None
    try:
        user, _, password = base64.b64decode(encoded).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise InvalidArgument(
            f"{path}: the 'auth' of {key!r} is not base64 of user:password; run engctl login again"
        ) from exc
    return user, password


def load_auths(path: Path) -> dict[str, tuple[str, str]]:
    """Every stored credential: normalised host -> (user, password)."""
    doc = _read_doc(path)
    found: dict[str, tuple[str, str]] = {}
    for key, entry in doc.get("auths", {}).items():
        creds = _decode(entry, key, path)
        if creds is not None:
            found[auth_key(key)] = creds
    return found


def lookup(path: Path, host: str) -> tuple[str, str] | None:
    """The credentials for ``host``, or None."""
    return load_auths(path).get(auth_key(host))


_HELPER_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def credential_helper(path: Path, host: str) -> str | None:
    """The credential helper NAME in charge of ``host`` (``credHelpers`` for the host, else
    ``credsStore``), or None when the ``auths`` entries are. As in docker, a helper in
    charge is the only source: ``auths`` is not consulted for that host."""
    doc = _read_doc(path)
    helpers = doc.get("credHelpers") or {}
    if not isinstance(helpers, dict):
        raise InvalidArgument(f"{path}: 'credHelpers' must map registry hosts to helper names")
    name = next((v for k, v in helpers.items() if auth_key(k) == auth_key(host)), None)
    if name is None:
        name = doc.get("credsStore") or None
    if name is None:
        return None
    if not isinstance(name, str) or not _HELPER_NAME_RE.match(name):
        raise InvalidArgument(
            f"{path}: invalid credential helper name {name!r} for {host} (docker-credential-"
            "NAME is run: letters, digits, '.', '_', '-')"
        )
    return name


def store_auth(path: Path, host: str, user: str, password: str) -> None:
    if not user or ":" in user:
        raise InvalidArgument(f"invalid registry user name {user!r}: must be non-empty, no ':'")
    doc = _read_doc(path)
    auths = doc.setdefault("auths", {})
    for key in [k for k in auths if auth_key(k) == auth_key(host)]:
        del auths[key]  # drop other spellings of the same host
    auths[auth_key(host)] = {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}
    _write(path, doc)


def remove_auth(path: Path, host: str) -> bool:
    """Forget the credentials of ``host``; False when there were none."""
    doc = _read_doc(path)
    auths = doc.get("auths", {})
    keys = [k for k in auths if auth_key(k) == auth_key(host)]
    if not keys:
        return False
    for key in keys:
        del auths[key]
    _write(path, doc)
    return True


def _write(path: Path, doc: dict[str, Any]) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_json_atomic(path, doc, mode=0o600)
    os.chmod(path, 0o600)  # the umask may have narrowed it; never wider than 0600
