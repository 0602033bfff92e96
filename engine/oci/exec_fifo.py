"""Start a container that runc created, without spawning ``runc start``.

``runc create`` leaves the container's init process blocked opening ``<state>/exec.fifo``
for writing. All that ``runc start`` does for such a container (runc 1.0 to 1.1, when no
poststart hooks are configured) is open the fifo for reading, read the byte init then
writes, and remove the fifo: the byte releases init into ``execve`` of the user process,
and the fifo's absence is how runc tells *running* from *created* afterwards. Doing the
same here saves a Go process start (~5 ms of every container start with runc).

The wait is bounded by init itself: a pidfd on it says when it died without writing (runc
polls ``/proc/PID/stat`` every 100 ms for the same reason).
"""

from __future__ import annotations

import os
from pathlib import Path

import trio

from engine.errors import RuntimeFailure

EXEC_FIFO = "exec.fifo"


async def release_created(container_state_dir: Path, init_pid: int) -> bool:
    """Let the created container's init exec its process. False when there is no exec
    fifo (not a runc-created container, or started already): the caller then runs the
    runtime's own ``start``, which reports the state properly.

    Cancellation: before the fifo is opened the container stays created; opening it is
    what releases init, so from then on the container runs (the caller's cleanup, a
    forced ``delete``, handles both). Errors: ``RuntimeFailure`` when init died before it
    was released.
    """
    fifo = container_state_dir / EXEC_FIFO
    try:
        fifo_fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        try:
            pid_fd = os.pidfd_open(init_pid)
        except ProcessLookupError:
            pid_fd = -1  # already gone: the fifo holds the byte or nothing
        try:
            if pid_fd >= 0:
                await _until_either_readable(fifo_fd, pid_fd)
            byte = _read_nonblocking(fifo_fd)
        finally:
            if pid_fd >= 0:
                os.close(pid_fd)
    finally:
        os.close(fifo_fd)
    if not byte:
        raise RuntimeFailure(
            f"the container's init process (pid {init_pid}) died before it could be started; "
            "see the container's log and the runtime's error output"
        )
    await trio.to_thread.run_sync(_remove, fifo)
    return True


async def _until_either_readable(fifo_fd: int, pid_fd: int) -> None:
    """The fifo is readable once init wrote its byte (or every writer left); the pidfd once
    init exited."""
    async with trio.open_nursery() as nursery:

        async def wait(fd: int) -> None:
            await trio.lowlevel.wait_readable(fd)
            nursery.cancel_scope.cancel()

        nursery.start_soon(wait, fifo_fd)
        nursery.start_soon(wait, pid_fd)


def _read_nonblocking(fd: int) -> bytes:
    try:
        return os.read(fd, 16)
    except BlockingIOError:
        return b""  # a writer still holds it but wrote nothing: init is not alive to write


def _remove(fifo: Path) -> None:
    fifo.unlink(missing_ok=True)
