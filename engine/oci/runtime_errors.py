"""Typed errors from what an OCI runtime printed: the one place its words are read."""

from __future__ import annotations

import re

from engine.errors import CommandNotExecutable, CommandNotFound, RuntimeFailure

_LOGRUS_MSG = re.compile(r'level=\w+ msg="((?:[^"\\]|\\.)*)"')
# What runc and crun say when the container's command cannot be run (docker's 127 / 126).
_COMMAND_NOT_FOUND = re.compile(r"executable file not found|no such file or directory", re.I)
_COMMAND_NOT_EXECUTABLE = re.compile(
    r"permission denied|exec format error|is a directory|open executable: operation not permitted", re.I)


def start_error(text: str, message: str) -> RuntimeFailure:
    """The error for a create/start/exec that failed with the runtime's ``message``: typed
    when the container's command could not be run, so callers never read the text."""
    if _COMMAND_NOT_EXECUTABLE.search(message):
        return CommandNotExecutable(text, runtime_error=message)
    if _COMMAND_NOT_FOUND.search(message):
        return CommandNotFound(text, runtime_error=message)
    return RuntimeFailure(text, runtime_error=message)


def runtime_message(stderr: bytes) -> str:
    """The runtime's own words: logrus ``msg="..."`` for runc, the plain text for crun."""
    text = stderr.decode("utf-8", "replace").strip()
    found = _LOGRUS_MSG.findall(text)
    if found:
        return "; ".join(m.encode().decode("unicode_escape") for m in found)
    return text
