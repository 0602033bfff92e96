"""A stopped container's root as ``cp`` sees it: its volumes and binds in place (docker
mounts them onto the root filesystem for a copy), in a private mount namespace that a
helper process holds (engine.actors.copy_mounts_helper) for as long as copies use it.

The daemon's own namespace never gets a mount: when the helper ends (``close``, or the
daemon dies and its stdin closes) the kernel drops its namespace and every mount in it.
A start of the container waits for the copies to end, as docker's does (its container
lock is held for a whole cp): verbs.wait_for_copies. Tmpfs mounts are left out: a stopped
container's have no content (docker skips them too)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path, PurePosixPath
from typing import Any

import attrs
import trio

from engine.errors import RuntimeFailure, Timeout

HELPER = Path(__file__).with_name("copy_mounts_helper.py")
START_TIMEOUT = 30.0  # seconds the helper may take to make its mounts
STOP_TIMEOUT = 5.0
MAX_REPLY = 64 * 1024


@attrs.define
class CopyView:
    process: trio.Process
    rootfs: Path
    holder: str  # the name it holds the volumes under (engine.volumes.store's accounting)

    def open_root(self) -> int:
        """An ``O_PATH`` fd of the root with the mounts (blocking). The fd stays valid
        after the helper ends, but without its mounts: close the view after the copy."""
        return os.open(f"/proc/{self.process.pid}/root/{str(self.rootfs).lstrip('/')}",
                       os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)

    def alive(self) -> bool:
        return self.process.returncode is None


def plan(mounts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """docker's order: a mount inside another one's destination goes after it (stable)."""
    return sorted(mounts, key=lambda m: len(PurePosixPath(m["destination"]).parts))


async def open_view(rootfs: Path, mounts: list[dict[str, Any]], holder: str) -> CopyView:
    """Start the helper and wait until it has made every mount; its error otherwise."""
    request = json.dumps({"root": str(rootfs), "mounts": [
        {"source": m["source"], "destination": m["destination"], "read_only": bool(m.get("read_only"))}
        for m in plan(mounts)]}).encode() + b"\n"
    process = await trio.lowlevel.open_process(
        [sys.executable, "-I", "-S", str(HELPER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL)
    view = CopyView(process, rootfs, holder)
    try:
        assert process.stdin is not None and process.stdout is not None
        reply = b""
        with trio.move_on_after(START_TIMEOUT) as scope:
            await process.stdin.send_all(request)
            while not reply.endswith(b"\n") and len(reply) < MAX_REPLY:
                chunk = await process.stdout.receive_some()
                if not chunk:
                    break
                reply += chunk
        if scope.cancelled_caught:
            raise Timeout(f"mounting the volumes for the copy took longer than {START_TIMEOUT:g}s")
        try:
            answer = json.loads(reply)
        except ValueError:
            answer = {"error": f"the mount helper ended without an answer ({reply[:200]!r})"}
        if not answer.get("ok"):
            raise RuntimeFailure(f"cannot mount the container's volumes for the copy: {answer.get('error')}")
    except BaseException:
        with trio.CancelScope(shield=True):
            await close(view)
        raise
    return view


async def close(view: CopyView) -> None:
    """End the helper: its namespace and every mount in it go with it."""
    process = view.process
    if process.stdin is not None:
        await process.stdin.aclose()
    with trio.move_on_after(STOP_TIMEOUT):
        await process.wait()
    if process.returncode is None:
        process.kill()
        await process.wait()
    if process.stdout is not None:
        await process.stdout.aclose()
