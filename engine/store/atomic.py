"""Crash-safe file writes: temp file in the same directory, fsync, rename, fsync the directory.

A reader sees the old content or the new, never a half-written file. These are blocking
calls: the daemon runs them through ``trio.to_thread.run_sync``.
"""

from __future__ import annotations

import ctypes
import json
import os
from pathlib import Path
from typing import Any

_libc = ctypes.CDLL(None, use_errno=True)


def syncfs(path: Path) -> None:
    """Flush the whole filesystem holding ``path`` (one call instead of an fsync per file)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if _libc.syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), str(path))
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bytes_atomic(path: Path, data: bytes, *, mode: int = 0o644, durable: bool = True) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{id(data):x}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        if durable:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.replace(tmp, path)
    if durable:
        fsync_dir(path.parent)


def write_json_atomic(path: Path, obj: Any, *, mode: int = 0o644, durable: bool = True) -> None:
    data = json.dumps(obj, indent=1, sort_keys=True).encode()
    write_bytes_atomic(path, data, mode=mode, durable=durable)


def read_json(path: Path) -> Any:
    return json.loads(path.read_bytes())
