"""A non-interactive ``RUNTIME exec``: an extra process in a running container.

``ExecHandle`` wraps the ``runc exec --process FILE --pid-file PIDFILE ID`` child::

    handle = await runtime.exec(cid, {"args": ["sh", "-c", "echo hi"]})
    async with handle:                       # kills the process if the block is left early
        async for chunk in handle.stdout:    # trio ReceiveStream of bytes; same for stderr
            ...
        code = await handle.wait()           # exit code (128+N when killed by signal N)

    code, out, err = await handle.communicate()   # or: read both streams and wait

Read the streams (or use ``communicate``) before or while waiting: a process that fills a
pipe blocks until someone reads it. ``kill(sig)`` signals the exec'd process itself (through
its pid file), not the runtime process in front of it.
"""

from __future__ import annotations

import os
import signal as signal_module
from pathlib import Path
from types import TracebackType

import trio

from engine.errors import CommandNotExecutable, CommandNotFound
from engine.oci.runtime_errors import runtime_message, start_error

TAIL = 4096  # bytes of stderr kept to explain an exec the runtime could not start


class _TailRecorder(trio.abc.ReceiveStream):
    """A receive stream that remembers the last bytes it passed on."""

    def __init__(self, inner: trio.abc.ReceiveStream) -> None:
        self.inner = inner
        self.tail = bytearray()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        data = await self.inner.receive_some(max_bytes)
        self.tail += data
        del self.tail[:-TAIL]
        return data

    async def aclose(self) -> None:
        await self.inner.aclose()


class ExecHandle:
    """A running exec; see the module docstring. Created by ``CLIRuntime.exec``."""

    def __init__(self, process: trio.Process, spec_file: Path, pid_file: Path) -> None:
        self._process = process
        self._spec_file = spec_file
        self._pid_file = pid_file
        assert process.stdout is not None and process.stderr is not None
        self.stdout: trio.abc.ReceiveStream = process.stdout
        self.stderr: trio.abc.ReceiveStream = _TailRecorder(process.stderr)
        self.stdin: trio.abc.SendStream | None = process.stdin
        # Whether the runtime got as far as starting the process (it writes the pid file
        # then): a failed exec that never started is the runtime's error, not the command's.
        self.started: bool | None = None

    @property
    def pid(self) -> int | None:
        """The exec'd process's host pid, once the runtime has started it."""
        try:
            return int(self._pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    async def wait(self) -> int:
        """Wait for the process to end; its exit code (128+N if killed by signal N). When
        the runtime could not start the command at all: docker's 127 (not found) or 126
        (not executable, or any other runtime failure), read from the runtime's message."""
        rc = await self._process.wait()
        if self.started is None:
            self.started = await trio.to_thread.run_sync(self._pid_file.exists)
        self._cleanup()
        if rc != 0 and not self.started:
            assert isinstance(self.stderr, _TailRecorder)
            error = start_error("exec", runtime_message(bytes(self.stderr.tail)))
            return error.exit_code if isinstance(error, CommandNotFound | CommandNotExecutable) else 126
        return 128 - rc if rc < 0 else rc

    async def kill(self, sig: int = signal_module.SIGKILL) -> None:
        """Send ``sig`` to the exec'd process (or the runtime, before it has a pid)."""
        pid = await trio.to_thread.run_sync(lambda: self.pid)
        try:
            if pid is not None:
                os.kill(pid, sig)
            else:
                self._process.send_signal(sig)
        except ProcessLookupError:
            pass

    async def communicate(self) -> tuple[int, bytes, bytes]:
        """Read stdout and stderr to the end, then wait: (exit code, stdout, stderr)."""
        out: list[bytes] = []
        err: list[bytes] = []

        async def drain(stream: trio.abc.ReceiveStream, into: list[bytes]) -> None:
            async for chunk in stream:
                into.append(bytes(chunk))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(drain, self.stdout, out)
            nursery.start_soon(drain, self.stderr, err)
        return await self.wait(), b"".join(out), b"".join(err)

    async def aclose(self) -> None:
        """Kill the process if it still runs and reap it (shielded: always completes)."""
        with trio.CancelScope(shield=True):
            if self._process.returncode is None:
                await self.kill(signal_module.SIGKILL)
            with trio.move_on_after(10):
                await self._process.wait()
            for stream in (self._process.stdin, self._process.stdout, self._process.stderr):
                if stream is not None:
                    await stream.aclose()
            self._cleanup()

    async def __aenter__(self) -> ExecHandle:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def _cleanup(self) -> None:
        for path in (self._spec_file, self._pid_file):
            path.unlink(missing_ok=True)


class _NoOutput(trio.abc.ReceiveStream):
    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        await trio.lowlevel.checkpoint()
        return b""

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


class TtyExecHandle(ExecHandle):
    """An exec with a pseudo-terminal (``exec -t``): ``stdout`` is everything the process
    writes to its terminal, ``stdin`` goes to the terminal, ``resize(rows, cols)`` sets its
    window size. ``stderr`` holds only the runtime's own errors. ``master`` is the
    terminal's master side, received from the runtime (None when it failed before
    sending it: ``wait`` then explains the failure as for any exec)."""

    def __init__(self, process: trio.Process, spec_file: Path, pid_file: Path,
                 master: int | None) -> None:
        from engine.oci.attach import TerminalReader

        self._process = process
        self._spec_file = spec_file
        self._pid_file = pid_file
        self._master = master
        assert process.stderr is not None
        self.stderr = _TailRecorder(process.stderr)
        self.started = None
        if master is None:
            self.stdout = _NoOutput()
            self.stdin = None
        else:
            self.stdout = TerminalReader(trio.lowlevel.FdStream(os.dup(master)))
            self.stdin = trio.lowlevel.FdStream(master)

    def resize(self, rows: int, cols: int) -> None:
        from engine.oci.attach import set_window

        if self._master is not None and self.stdin is not None:
            try:
                set_window(self.stdin.fileno(), rows, cols)  # type: ignore[attr-defined]
            except (OSError, ValueError):
                pass  # the terminal is closed: the exec is ending

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True):
            for stream in (self.stdout, self.stdin):
                if stream is not None:
                    await stream.aclose()
            await super().aclose()
