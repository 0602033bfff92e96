"""The engine's one exception hierarchy.

Every error the engine raises on purpose is an ``EngineError``. Each class carries a stable
``code`` (sent over the RPC as the error's type, never renamed) and the ``exit_code`` engctl
exits with (docker's conventions: 125 for an engine error; the container's own code
otherwise, which is not an error at all).

Messages say what was wrong and, where there is one, what to do about it.
Stdlib only: engctl imports this module on its fast path.
"""

from __future__ import annotations

# Annotations only: typing costs engctl milliseconds of start-up (type checkers treat a name
# TYPE_CHECKING as true).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, ClassVar


class EngineError(Exception):
    """Base of every deliberate engine error."""

    code: ClassVar[str] = "internal"
    exit_code: ClassVar[int] = 125

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def __str__(self) -> str:
        return self.message

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details:
            wire["details"] = self.details
        return wire


class InternalError(EngineError):
    """A bug or an unexpected failure inside the engine."""

    code = "internal"


class InvalidArgument(EngineError):
    """The caller sent something malformed: a wrong type, a bad reference, a bad flag."""

    code = "invalid_argument"


class NotFound(EngineError):
    """The named container, image, network, volume or method does not exist."""

    code = "not_found"


class AlreadyExists(EngineError):
    """A name or an object is taken already."""

    code = "already_exists"


class Conflict(EngineError):
    """The object is in a state that forbids the operation (container running, image in use)."""

    code = "conflict"


class Unavailable(EngineError):
    """Something the operation needs is missing or down: a runtime, the daemon, a registry."""

    code = "unavailable"


class PermissionDenied(EngineError):
    """Authentication or authorisation failed (registry credentials, socket permissions)."""

    code = "permission_denied"


class ResourceExhausted(EngineError):
    """A limit was hit: frame size, disk full, a size cap on a manifest or blob."""

    code = "resource_exhausted"


class DigestMismatch(EngineError):
    """Content does not match the digest (or size) that names it."""

    code = "digest_mismatch"


class UnsafeContent(EngineError):
    """Hostile content refused: a layer entry escaping its root, a bad link, a device."""

    code = "unsafe_content"


class RuntimeFailure(EngineError):
    """The OCI runtime or the monitor failed; the message carries its own words."""

    code = "runtime_failure"


class CommandNotFound(RuntimeFailure):
    """The container's command (or an exec's) does not exist in its filesystem."""

    code = "command_not_found"
    exit_code = 127


class CommandNotExecutable(RuntimeFailure):
    """The container's command (or an exec's) exists but cannot be run: a directory, no
    execute permission, a format the kernel does not know."""

    code = "command_not_executable"
    exit_code = 126


class Timeout(EngineError):
    """An operation did not finish within its deadline."""

    code = "timeout"


class ProtocolError(EngineError):
    """A malformed RPC message: not msgpack, wrong shape, wrong types, too large."""

    code = "protocol_error"


class MethodNotFound(NotFound):
    """The RPC method does not exist."""

    code = "method_not_found"


class Cancelled(EngineError):
    """The operation was cancelled (client went away, daemon shutting down)."""

    code = "cancelled"


class NotImplementedByEngine(EngineError):
    """A well-formed request for something the engine does not do (yet): a Docker API
    endpoint it does not serve, a feature it lacks."""

    code = "not_implemented"


class ConfigError(InvalidArgument):
    """The daemon's configuration (flags or JSON file) is invalid."""

    code = "config_error"


class DaemonNotRunning(Unavailable):
    """engctl could not reach the daemon."""

    code = "daemon_not_running"


# errno values of a full disk or an exhausted quota (ENOSPC, EDQUOT on Linux)
_NO_SPACE = (28, 122)


def no_space(error: BaseException) -> OSError | None:
    """The OSError saying the disk (or quota) is full inside ``error`` (itself, one it was
    raised from, or one of a group), if there is one."""
    pending = [error]
    seen: set[int] = set()
    while pending:
        e = pending.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in _NO_SPACE:
            return e
        pending.extend(x for x in (e.__cause__, e.__context__) if x is not None)
        pending.extend(getattr(e, "exceptions", ()))
    return None


def disk_full(error: OSError, where: object = None) -> ResourceExhausted:
    """A full disk in words: which path, and what to do."""
    path = error.filename or where
    place = f" writing {path}" if path else ""
    return ResourceExhausted(
        f"no space left on device{place} ({error.strerror or 'ENOSPC'}): nothing was changed; "
        "free some space (e.g. `engctl image prune`, `engctl container prune`) and retry",
        **({"path": str(path)} if path else {}),
    )


def all_error_classes() -> list[type[EngineError]]:
    found: list[type[EngineError]] = []
    pending: list[type[EngineError]] = [EngineError]
    while pending:
        cls = pending.pop()
        found.append(cls)
        pending.extend(cls.__subclasses__())
    return found


def error_class_for(code: str) -> type[EngineError]:
    """The class for a wire code; unknown codes (a newer daemon) become EngineError."""
    for cls in all_error_classes():
        if cls.code == code and cls is not EngineError:
            return cls
    return EngineError


def from_wire(wire: Any) -> EngineError:
    """Rebuild an error from its wire form: a map, or neovim-style ``[code, message]``."""
    if isinstance(wire, dict):
        code = str(wire.get("code", "internal"))
        message = str(wire.get("message", "unknown error"))
        details = wire.get("details") or {}
    elif isinstance(wire, list | tuple) and len(wire) == 2:
        code, message, details = str(wire[0]), str(wire[1]), {}
    else:
        code, message, details = "internal", repr(wire), {}
    cls = error_class_for(code)
    err = cls(message, **(details if isinstance(details, dict) else {}))
    if cls is EngineError:
        err.code = code  # type: ignore[misc]
    return err
