"""dockerd's words for the errors users and scripts meet most (docker 20.10's daemon, the
one tests/dockerapi/test_versus_dockerd.py runs side by side): the engine's own messages
are clearer for engctl, but through the Docker API the CLI prints the daemon's message as
it is, and scripts grep for docker's. Each helper takes the engine's error and returns the
same kind of error (same status) with docker's text; the engine's details stay.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

from engine.errors import AlreadyExists, Conflict, EngineError, InvalidArgument, NotFound
from engine.reference import parse_reference

# runc's logrus line as the engine passes it on: time="…" level=error msg="…"
_LOGRUS = re.compile(r'time="[^"]*" level=\w+ msg="((?:[^"\\]|\\.)*)"')


def image_name(name: str) -> str:
    """How dockerd names an image it did not find: ``busybox`` -> ``busybox:latest``."""
    try:
        ref = parse_reference(name)
    except EngineError:
        return name
    text = ref.familiar()
    if ref.tag is None and ref.digest is None:
        text += ":latest"
    return text


@contextlib.contextmanager
def no_such_image(name: str) -> Iterator[None]:
    try:
        yield
    except NotFound as e:
        raise NotFound(f"No such image: {image_name(name)}", **e.details) from None


@contextlib.contextmanager
def no_such_network(name: str) -> Iterator[None]:
    try:
        yield
    except NotFound as e:
        raise NotFound(f"network {name} not found", **e.details) from None


@contextlib.contextmanager
def network_exists(name: str) -> Iterator[None]:
    try:
        yield
    except AlreadyExists as e:
        raise AlreadyExists(f"network with name {name} already exists", **e.details) from None


def name_in_use(name: str, holder_id: str) -> AlreadyExists:
    return AlreadyExists(
        f'Conflict. The container name "/{name}" is already in use by container "{holder_id}". '
        "You have to remove (or rename) that container to be able to reuse that name.")


def remove_running(container_id: str, state: str) -> Conflict:
    return Conflict(f"You cannot remove a {state} container {container_id}. Stop the container before "
                    "attempting removal or force remove")


def not_running(container_id: str) -> Conflict:
    return Conflict(f"Container {container_id} is not running")


def invalid_name(name: str) -> InvalidArgument:
    return InvalidArgument(f"Invalid container name ({name}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed")


def already_paused(container_id: str) -> Conflict:
    return Conflict(f"Container {container_id} is already paused")


def not_paused(container_id: str) -> Conflict:
    return Conflict(f"Container {container_id} is not paused")


def rename_name_in_use(name: str, holder_id: str) -> AlreadyExists:
    return AlreadyExists(f"Error when allocating new name: {name_in_use(name, holder_id)}")


def kill_not_running(given: str, container_id: str) -> Conflict:
    return Conflict(f"Cannot kill container: {given}: Container {container_id} is not running")


def volume_in_use(name: str, container_ids: list[str]) -> Conflict:
    return Conflict(f"remove {name}: volume is in use - [{', '.join(container_ids)}]")


def no_such_volume(name: str) -> NotFound:
    return NotFound(f"get {name}: no such volume")


def image_in_use(given: str, container_id: str, image_id: str) -> Conflict:
    return Conflict(f'conflict: unable to remove repository reference "{given}" (must force) - container '
                    f"{container_id[:12]} is using its referenced image {image_id.removeprefix('sha256:')[:12]}")


# engine's words for an unknown --user/-u (engine.oci.user) and dockerd's (libcontainer's)
_UNKNOWN_USER = re.compile(r"unable to find (user|group) '(.*)': no matching entry in the image's /etc/(passwd|group)"
                           r"; use a numeric [ug]id or a (?:user|group) the image defines")


def unknown_user(error: EngineError) -> EngineError:
    """``run -u nosuch`` / ``exec -u nosuch``: dockerd's "unable to find user nosuch: no
    matching entries in passwd file"; any other error as it is."""
    found = _UNKNOWN_USER.fullmatch(str(error))
    if found is None:
        return error
    kind, name, file = found.groups()
    return type(error)(f"unable to find {kind} {name}: no matching entries in {file} file", **error.details)


def runtime_error(error: EngineError) -> EngineError:
    """A runtime's failure to start a process, without the logrus wrapper runc writes its
    own message in (docker shows runc's message itself); an unknown user in dockerd's words."""
    error = unknown_user(error)
    text = str(error)
    found = _LOGRUS.search(text)
    if found is None:
        return error
    inner = found.group(1).replace('\\"', '"').replace("\\\\", "\\")
    before = text[:found.start()]
    if inner.startswith(before):  # "runc create failed: " twice: runc's own words say it
        before = ""
    return type(error)(before + inner + text[found.end():], **error.details)

