"""Exec sessions: an extra process in a running container, each under its own conmon.

``start_exec`` runs ``conmon --exec`` (podman's ``libpod/oci_conmon_exec_linux.go`` does the
same): conmon runs ``RUNTIME exec --detach --process FILE``, becomes the process's parent (a
child subreaper: the runtime exits at once), holds its stdio (pipes, or the terminal's
master with ``-t``), serves them on an attach socket, and records the exit code. conmon
double-forks and calls ``setsid``, so the session outlives the daemon: a restarted daemon
finds it again in ``<work dir>/execs/<session>/`` (``find_surviving_execs``).

Handshake, with three pipes named in conmon's environment: ``_OCI_STARTPIPE`` gets a byte to
let conmon start; conmon then binds ``<session>/attach`` and says ``{"data": 0}`` on
``_OCI_ATTACHPIPE``; we connect, and a second byte on the start pipe lets it run the runtime
(no output is lost before we listen). ``_OCI_SYNCPIPE`` then carries ``{"data": PID}`` (or
``{"data": -1, "message": "<runtime's error>"}`` when the command could not be started),
and ``{"data": EXIT_CODE}`` once the process ended; conmon also writes the code to
``<session>/exits/<container id>``.

``ExecHandle`` (``TtyExecHandle`` with a terminal) is what callers hold::

    handle = await runtime.exec(cid, {"args": ["sh", "-c", "echo hi"]}, work_dir=run_dir)
    async with handle:                       # kills the process if the block is left early
        async for chunk in handle.stdout:    # trio ReceiveStream of bytes; same for stderr
            ...
        code = await handle.wait()           # exit code (128+N when killed by signal N)

    code, out, err = await handle.communicate()   # or: read both streams and wait

The streams end when conmon does: right after the process ends, even when processes it left
in the background still hold its output (docker's exec returns then too). ``kill(sig)``
signals the exec'd process. Leaving the handle kills the process, unless the daemon is
stopping (``leave_sessions_running``): then the session keeps running for the next daemon.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import shutil
import signal as signal_module
import subprocess
import time
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Any

import attrs
import trio

from engine.errors import (
    CommandNotExecutable,
    CommandNotFound,
    Conflict,
    RuntimeFailure,
    Unavailable,
)
from engine.oci import conmon
from engine.oci.attach import ConmonAttach, check_window, write_control_nowait
from engine.oci.runtime_errors import runtime_message, start_error

log = logging.getLogger("engine.exec")

SESSIONS_DIR = "execs"
_SYNC_LINE_MAX = 64 * 1024
_LOST = 255  # the exit code of a session whose monitor died without recording one
_KILL_WAIT = 10.0  # seconds aclose waits for a killed process's monitor to report

# Set once the daemon is stopping: open handles then leave their sessions running.
_leaving = False


def leave_sessions_running() -> None:
    """The daemon is stopping (live-restore): handles closed from now on detach from their
    sessions instead of killing them; the next daemon adopts them (``find_surviving_execs``)."""
    global _leaving
    _leaving = True


@attrs.frozen
class ExecFiles:
    """One session's directory (conmon's bundle ``-b``): its files and sockets."""

    dir: Path
    container_id: str

    @property
    def session_id(self) -> str:
        return self.dir.name

    @property
    def process_spec(self) -> Path:
        return self.dir / "process.json"

    @property
    def pid_file(self) -> Path:
        return self.dir / "pid"

    @property
    def conmon_pidfile(self) -> Path:
        return self.dir / "conmon.pid"

    @property
    def exit_dir(self) -> Path:
        return self.dir / "exits"

    @property
    def info_file(self) -> Path:
        return self.dir / "session.json"


def sessions_dir(work_dir: Path) -> Path:
    return work_dir / SESSIONS_DIR


def exec_conmon_argv(files: ExecFiles, runtime_binary: str, runtime_args: list[str],
                     *, stdin: bool, tty: bool) -> list[str]:
    """conmon's command line for one exec session (podman's ``startExec``)."""
    argv = [
        str(conmon.CONMON_BINARY),
        "--api-version", "1",
        "-c", files.container_id,
        "-u", files.session_id,
        "-n", files.container_id,
        "-r", runtime_binary,
        "-b", str(files.dir),
        "-p", str(files.pid_file),
        "--conmon-pidfile", str(files.conmon_pidfile),
        "--exit-dir", str(files.exit_dir),
        # the output goes to the attach socket only (docker keeps no log of an exec)
        "-l", "none",
        "--no-sync-log",
        # the socket at <session>/attach, bound through /proc/self/fd (long paths)
        "--full-attach",
        "-e", "--exec-attach", "--exec-process-spec", str(files.process_spec),
    ]  # fmt: skip
    if tty:
        argv.append("-t")  # a terminal: its master is conmon's; input goes to it unasked
    elif stdin:
        argv.append("-i")  # a stdin pipe, closed when our connection shuts its sending side
    for arg in runtime_args:
        argv += ["--runtime-arg", arg]
    return argv


def _write_session(files: ExecFiles, spec: dict[str, Any], info: dict[str, Any]) -> None:
    # the process spec holds the exec's environment (secrets, often): 0600 in a 0700 directory
    files.dir.parent.mkdir(parents=True, exist_ok=True)
    files.dir.mkdir(mode=0o700)
    files.exit_dir.mkdir(parents=True, mode=0o700)
    for path, doc in ((files.process_spec, spec), (files.info_file, info)):
        with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600), "w") as fh:
            json.dump(doc, fh)


def _remove_session(files: ExecFiles) -> None:
    shutil.rmtree(files.dir, ignore_errors=True)


class _SyncPipe:
    """conmon's sync (or attach) pipe: one JSON message a line."""

    def __init__(self, fd: int) -> None:
        self._stream = trio.lowlevel.FdStream(fd)
        self._buf = b""

    async def message(self) -> dict[str, Any] | None:
        """The next message, or None once conmon closed the pipe without one."""
        while b"\n" not in self._buf:
            if len(self._buf) > _SYNC_LINE_MAX:
                raise RuntimeFailure(f"conmon sent an overlong sync message: {self._buf[:200]!r}")
            chunk = await self._stream.receive_some(4096)
            if not chunk:
                return None
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        try:
            message = json.loads(line.decode("utf-8", "replace"))
            int(message["data"])
        except (ValueError, KeyError, TypeError):
            raise RuntimeFailure(f"conmon sent an unreadable sync message: {line[:200]!r}") from None
        return message  # type: ignore[no-any-return]

    async def aclose(self) -> None:
        await self._stream.aclose()


# --- output and input over the attach socket ------------------------------------------------


class _Demux:
    """stdout and stderr from the one attach connection. Whichever reader is waiting
    receives for both (no task of its own: the handle has no nursery); the other's data is
    queued until it asks. ``before_end`` runs before the end is reported (the start's
    error, if any, goes on stderr first)."""

    def __init__(self, conn: ConmonAttach, before_end: Any) -> None:
        self._conn = conn
        self._queues: dict[str, collections.deque[bytes]] = {"stdout": collections.deque(),
                                                              "stderr": collections.deque()}
        self._receiving = False
        self._ended = False
        self._lot = trio.lowlevel.ParkingLot()
        self._before_end = before_end

    def push(self, name: str, data: bytes) -> None:
        self._queues[name].append(data)

    async def receive(self, name: str, max_bytes: int | None) -> bytes:
        queue = self._queues[name]
        while True:
            if queue:
                data = queue.popleft()
                if max_bytes is not None and len(data) > max_bytes:
                    queue.appendleft(data[max_bytes:])
                    data = data[:max_bytes]
                await trio.lowlevel.checkpoint()
                return data
            if self._ended:
                await trio.lowlevel.checkpoint()
                return b""
            if self._receiving:
                await self._lot.park()
                continue
            self._receiving = True
            try:
                item = await self._conn.receive()
                if item is None:
                    await self._before_end()
                    self._ended = True
                elif item[1]:
                    self._queues["stderr" if item[0] == "stderr" else "stdout"].append(item[1])
            finally:
                self._receiving = False
                self._lot.unpark_all()


class _DemuxStream(trio.abc.ReceiveStream):
    def __init__(self, demux: _Demux, name: str) -> None:
        self._demux = demux
        self._name = name

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        return await self._demux.receive(self._name, max_bytes)

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()  # the connection is the handle's to close


class _AttachStdin(trio.abc.SendStream):
    """The process's stdin (or terminal input) through conmon; ``aclose`` is its EOF."""

    def __init__(self, conn: ConmonAttach) -> None:
        self._conn = conn

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._conn.write(bytes(data))

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        self._conn.close_stdin()
        await trio.lowlevel.checkpoint()


# --- a session started by this daemon --------------------------------------------------------


class ExecHandle:
    """A running exec; see the module docstring. Created by ``start_exec``."""

    def __init__(self, files: ExecFiles, sync: _SyncPipe, conn: ConmonAttach, *, stdin: bool,
                 tty: bool, first_process: trio.Process | None = None) -> None:
        self.files = files
        self._first_process = first_process  # conmon's first process: reaped on close
        self.session_id = files.session_id
        self._sync = sync
        self._conn = conn
        self._start_lock = trio.Lock()
        self._exit_lock = trio.Lock()
        self._pid: int | None = None
        self._failure: str | None = None  # the runtime's words when it could not start it
        self._code: int | None = None
        self._closed = False
        # Whether the runtime started the process (None until conmon said): a failed exec
        # that never started is the runtime's error, not the command's.
        self.started: bool | None = None
        self.detached = False  # left running for the next daemon (see aclose)
        self._demux = _Demux(conn, self._ensure_started)
        self.stdout: trio.abc.ReceiveStream = _DemuxStream(self._demux, "stdout")
        self.stderr: trio.abc.ReceiveStream = _DemuxStream(self._demux, "stderr")
        self.stdin: trio.abc.SendStream | None = _AttachStdin(conn) if stdin or tty else None

    @property
    def failure(self) -> str | None:
        """The runtime's words when it could not start the process (``started`` is False)."""
        return self._failure

    @property
    def pid(self) -> int | None:
        """The exec'd process's host pid, once the runtime has started it."""
        if self._pid is None:
            try:
                self._pid = int(self.files.pid_file.read_text().strip())
            except (FileNotFoundError, ValueError):
                return None
        return self._pid

    async def _ensure_started(self) -> bool:
        """Read conmon's first message (once): the pid, or why the runtime failed."""
        async with self._start_lock:
            if self.started is None:
                message = await self._sync.message()
                if message is None:
                    self._failure = "the exec's monitor (conmon) exited before the process started"
                    self.started = False
                elif int(message["data"]) > 0:
                    self._pid = int(message["data"])
                    self.started = True
                else:
                    self._failure = runtime_message(str(message.get("message") or "").encode()) or (
                        "the runtime could not start the process (no error text)")
                    self.started = False
                    self._demux.push("stderr", f"exec failed: {self._failure}\n".encode())
        return self.started

    async def wait(self) -> int:
        """Wait for the process to end; its exit code (128+N if killed by signal N). When
        the runtime could not start the command at all: docker's 127 (not found) or 126
        (not executable, or any other runtime failure), read from the runtime's message."""
        if await self._ensure_started():
            async with self._exit_lock:
                if self._code is None:
                    self._code = await self._read_exit()
                    await self._finish()
        elif self._code is None:
            error = start_error("exec", self._failure or "")
            self._code = error.exit_code if isinstance(error, CommandNotFound | CommandNotExecutable) else 126
            await self._finish()
        return self._code

    async def _read_exit(self) -> int:
        message = await self._sync.message()
        if message is not None:
            code = int(message["data"])
            return code if code >= 0 else _LOST
        # conmon went without saying (killed?): its exit file, if it wrote one
        info = await trio.to_thread.run_sync(conmon.read_exit, self.files.dir, self.files.container_id)
        return info.exit_code if info is not None else _LOST

    async def _finish(self) -> None:
        """The session is over: its directory goes (the exit code is ours now), in a worker
        thread the exit does not wait for."""
        trio.lowlevel.start_thread_soon(partial(_remove_session, self.files), _ignore_outcome)
        await trio.lowlevel.checkpoint()

    async def kill(self, sig: int = signal_module.SIGKILL) -> None:
        """Send ``sig`` to the exec'd process (once the runtime has started it)."""
        if not await self._ensure_started() or self._code is not None or self._pid is None:
            return
        try:
            os.kill(self._pid, sig)
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
        """Kill the process if it still runs and wait for its monitor (shielded: always
        completes). While the daemon stops (``leave_sessions_running``) the session is left
        running instead, its directory kept for the next daemon."""
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        self._closed = True
        with trio.CancelScope(shield=True):
            if self._code is None and _leaving:
                self.detached = True
            elif self._code is None:
                with trio.move_on_after(_KILL_WAIT):
                    await self.kill(signal_module.SIGKILL)
                    await self.wait()
            await self._conn.aclose()
            await self._sync.aclose()
            await self._reap_first_process()

    async def _reap_first_process(self) -> None:
        proc, self._first_process = self._first_process, None
        if proc is None:
            return
        if proc.poll() is None:  # it exits once it forked the monitor: long ago, as a rule
            with trio.move_on_after(_KILL_WAIT):
                await proc.wait()
        if proc.returncode not in (0, None):
            log.warning("exec session %s: conmon's first process exited with %s", self.session_id,
                        proc.returncode)
        if proc.stderr is not None:
            await proc.stderr.aclose()

    async def __aenter__(self) -> ExecHandle:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


class TtyExecHandle(ExecHandle):
    """An exec with a pseudo-terminal (``exec -t``), held by its conmon: ``stdout`` is
    everything the process writes to it, ``stdin`` goes to it, ``resize(rows, cols)`` sets
    its window size (conmon queues a size sent before the terminal exists). ``stderr``
    holds only the runtime's own error."""

    def resize(self, rows: int, cols: int) -> None:
        check_window(rows, cols)
        try:
            write_control_nowait(self.files.dir, f"1 {rows} {cols}\n".encode())
        except (Conflict, RuntimeFailure, OSError):
            pass  # the session is ending


# --- starting one ----------------------------------------------------------------------------


async def start_exec(
    container_id: str,
    spec: dict[str, Any],
    work_dir: Path,
    runtime_binary: str,
    runtime_args: list[str],
    *,
    stdin: bool,
    tty: bool,
) -> ExecHandle:
    """Start ``spec`` (a complete OCI ``process``) in the running container under a new
    conmon; return once the runtime has been told to go (it reports the pid or its error
    through the handle). The session lives in ``<work_dir>/execs/<session id>/``.

    Cancellation: safe; whatever was started is killed and the directory removed.
    Errors: ``RuntimeFailure`` when conmon could not be started; ``Unavailable`` when it
    is missing."""
    root = sessions_dir(work_dir)
    files = ExecFiles(root / os.urandom(8).hex(), container_id)
    info = {"args": list(spec.get("args") or []), "tty": tty, "started": time.time()}
    argv = exec_conmon_argv(files, runtime_binary, runtime_args, stdin=stdin, tty=tty)
    sync_r, sync_w = os.pipe2(os.O_CLOEXEC)
    start_r, start_w = os.pipe2(os.O_CLOEXEC)
    attach_r, attach_w = os.pipe2(os.O_CLOEXEC)
    sync = _SyncPipe(sync_r)
    attach_pipe = _SyncPipe(attach_r)
    proc: trio.Process | None = None
    conn: ConmonAttach | None = None
    try:
        try:
            proc = await _spawn(argv, root, sync_w, start_r, attach_w)
        finally:
            # only conmon may hold the write ends, or EOF never comes if conmon dies
            for fd in (sync_w, start_r, attach_w):
                os.close(fd)
        # conmon loads meanwhile, and reads nothing of the session before its start pipe
        await trio.to_thread.run_sync(_write_session, files, spec, info)
        os.write(start_w, b"\0")
        ready = await attach_pipe.message()
        if ready is None:
            await conmon.wait_first_process(proc, "start an exec")
            raise RuntimeFailure(f"conmon for an exec in {container_id} exited before it could attach")
        conn = await ConmonAttach.connect(files.dir)
        os.write(start_w, b"\0")  # the runtime may run now: we listen
        handle_class = TtyExecHandle if tty else ExecHandle
        # conmon's first process forked the monitor (it answered): reaped by the handle
        return handle_class(files, sync, conn, stdin=stdin, tty=tty, first_process=proc)
    except BaseException:
        with trio.CancelScope(shield=True):
            if conn is not None:
                await conn.aclose()
            await sync.aclose()
            await _abort(files, proc)
        raise
    finally:
        os.close(start_w)
        with trio.CancelScope(shield=True):
            await attach_pipe.aclose()


# Session roots known to exist: conmon starts in one (it must exist), before the session's
# own directory is written (while conmon loads).
_roots: set[Path] = set()


async def _spawn(argv: list[str], root: Path, sync_w: int, start_r: int, attach_w: int) -> trio.Process:
    # cwd: conmon writes an oom marker there (none of ours reads it for an exec)
    env = conmon.runtime_environment(_OCI_SYNCPIPE=str(sync_w), _OCI_STARTPIPE=str(start_r),
                                     _OCI_ATTACHPIPE=str(attach_w))
    for attempt in (1, 2):
        if root not in _roots:
            await trio.to_thread.run_sync(partial(root.mkdir, parents=True, exist_ok=True))
            if len(_roots) > 4096:
                _roots.clear()  # a bound: those of removed containers pile up otherwise
            _roots.add(root)
        try:
            return await trio.lowlevel.open_process(
                argv, pass_fds=(sync_w, start_r, attach_w), env=env, cwd=str(root),
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            )  # fmt: skip
        except FileNotFoundError:
            if attempt == 1 and conmon.CONMON_BINARY.exists():
                _roots.discard(root)  # removed since (the container's run directory went)
                continue
            raise Unavailable(f"{argv[0]} not found; install the conmon package") from None
    raise AssertionError("unreachable")


async def _abort(files: ExecFiles, proc: trio.Process | None) -> None:
    """Undo a start that failed or was cancelled: the process, its monitor, the files."""
    if proc is not None and proc.returncode is None:
        proc.kill()
        with trio.move_on_after(5):
            await proc.wait()

    def kill_all() -> None:
        # the monitor first: its pid file is written before its first process exits
        monitor = conmon.monitor_pid(files.dir, files.container_id)
        if monitor is not None:
            for pid in (_read_pid(files.pid_file), monitor):
                if pid is not None:
                    try:
                        os.kill(pid, signal_module.SIGKILL)
                    except ProcessLookupError:
                        pass
        _remove_session(files)

    await trio.to_thread.run_sync(kill_all)


def _ignore_outcome(outcome: Any) -> None:
    pass  # a removal that failed leaves a directory the next adoption clears


def _read_pid(path: Path) -> int | None:
    try:
        pid = int(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    return pid if pid > 0 else None


# --- sessions that outlived a daemon -----------------------------------------------------------


class SurvivingExec:
    """An exec session a previous daemon started, found on disk (``find_surviving_execs``):
    ``wait()`` for its exit code (from conmon's exit file), ``kill(sig)``. Its output went
    with the old daemon's client."""

    def __init__(self, files: ExecFiles, args: list[str]) -> None:
        self.files = files
        self.session_id = files.session_id
        self.args = args
        self.started = True
        self._code: int | None = None
        self._pid: int | None = None
        self._wait_lock = trio.Lock()

    @property
    def pid(self) -> int | None:
        """The exec'd process's host pid (read once from the session's pid file)."""
        if self._pid is None:
            self._pid = _read_pid(self.files.pid_file)
        return self._pid

    async def wait(self) -> int:
        """Wait until its monitor recorded the exit; the code (255 when the monitor died
        without recording one). The directory goes afterwards. Any number may wait."""
        async with self._wait_lock:
            return await self._wait()

    async def _wait(self) -> int:
        if self._code is None:
            try:
                info = await conmon.wait_monitor_exit(self.files.dir, self.files.container_id)
                code = info.exit_code
            except RuntimeFailure:
                code = _LOST
            await trio.to_thread.run_sync(_remove_session, self.files)
            self._code = code
        return self._code

    async def kill(self, sig: int = signal_module.SIGKILL) -> None:
        def send() -> None:
            # the process is the live monitor's child: while the monitor lives, it is ours
            if conmon.monitor_pid(self.files.dir, self.files.container_id) is None:
                return
            pid = _read_pid(self.files.pid_file)
            if pid is not None:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass

        await trio.to_thread.run_sync(send)

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


def find_surviving_execs(work_dir: Path, container_id: str) -> list[SurvivingExec]:
    """Every exec session left in ``work_dir`` by an earlier daemon, running or ended
    (blocking: call in a worker thread)."""
    root = sessions_dir(work_dir)
    found = []
    for entry in sorted(root.iterdir()) if root.is_dir() else []:
        if not entry.is_dir():
            continue  # conmon's oom marker
        try:
            args = list(json.loads((entry / "session.json").read_text()).get("args") or [])
        except (OSError, ValueError, AttributeError):
            args = []
        survivor = SurvivingExec(ExecFiles(entry, container_id), args)
        _ = survivor.pid  # read here, in the worker thread
        found.append(survivor)
    return found
