"""Helpers for the image end-to-end tests: engctl as a subprocess, the content dir on disk."""

from __future__ import annotations

import os
import subprocess
import sys

import attrs

from engine.testing.daemon import Daemon

ENGCTL = [sys.executable, "-m", "engine.cli.main"]


@attrs.frozen
class Result:
    code: int
    out: str
    err: str


def engctl(daemon: Daemon, *args: str, input: str | None = None, timeout: float = 120) -> Result:
    """Run engctl against ``daemon`` (stdout is a pipe, never a TTY)."""
    env = {**os.environ, "ENGINE_HOST": daemon.host}
    proc = subprocess.run(
        [*ENGCTL, *args], capture_output=True, text=True, env=env, input=input,
        timeout=timeout,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


def ok(daemon: Daemon, *args: str, input: str | None = None) -> str:
    """engctl that must succeed; its stdout."""
    result = engctl(daemon, *args, input=input)
    assert result.code == 0, f"engctl {' '.join(args)} failed ({result.code}): {result.err}"
    return result.out



def blob_files(daemon: Daemon) -> set[str]:
    """The digests in the daemon's content store, read from disk."""
    directory = daemon.root / "content" / "blobs" / "sha256"
    return {"sha256:" + p.name for p in directory.iterdir()} if directory.exists() else set()


def ingest_files(daemon: Daemon) -> dict[str, int]:
    directory = daemon.root / "content" / "ingest"
    return {p.name: p.stat().st_size for p in directory.iterdir()} if directory.exists() else {}
