"""Start conmon as a container's parent and read what it records.

conmon (``/usr/bin/conmon``, the monitor of podman and CRI-O) runs ``RUNTIME create``,
keeps the container's stdio in a size-capped k8s-file log, and writes the exit code to
``<exit dir>/<id>`` when the container ends. It double-forks and calls ``setsid``, so the
container survives the death of the engine; the engine finds it again through the files
below (``MonitorFiles``).

Handshake (podman ``libpod/oci_conmon_common.go``): conmon inherits two pipes named by the
environment. It blocks on ``_OCI_STARTPIPE`` until we write a byte (podman: the moment to move
it into a cgroup; here also the moment the bundle is ready, so conmon can load while the
engine prepares it), then reports on ``_OCI_SYNCPIPE`` one JSON line: ``{"data": PID}``
once the container is created, or ``{"data": -1, "message": "<runtime's stderr>"}``.

conmon 2.1.6 writes its ``oom`` marker into its *current directory* (and ``persist/oom``),
so it runs with the container's state dir as cwd.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path

import attrs
import trio

from engine.errors import RuntimeFailure, Unavailable
from engine.oci.runtime_errors import start_error
from engine.plugin import Created, CreateRequest, ExitInfo

CONMON_BINARY = Path("/usr/bin/conmon")
_SYNC_LINE_MAX = 64 * 1024


@attrs.frozen
class MonitorFiles:
    """Where conmon keeps its files for one container (all inside ``state_dir``)."""

    state_dir: Path
    container_id: str

    @property
    def conmon_pidfile(self) -> Path:
        return self.state_dir / "conmon.pid"

    @property
    def container_pidfile(self) -> Path:
        return self.state_dir / "pidfile"

    @property
    def exit_dir(self) -> Path:
        return self.state_dir / "exits"

    @property
    def exit_file(self) -> Path:
        return self.exit_dir / self.container_id

    @property
    def persist_dir(self) -> Path:
        return self.state_dir / "persist"

    @property
    def socket_dir(self) -> Path:
        return self.state_dir / "sockets"

    @property
    def oom_markers(self) -> tuple[Path, Path]:
        # cwd marker (cgroup v1 path of conmon 2.1.6) and the persist-dir one (newer conmon)
        return (self.state_dir / "oom", self.persist_dir / "oom")

    def make_dirs(self) -> None:
        for path in (self.state_dir, self.exit_dir, self.persist_dir, self.socket_dir):
            path.mkdir(parents=True, exist_ok=True)

    def clear_previous_run(self) -> None:
        """A restarted container reuses its state dir: last run's exit file, oom marker and
        pid files would make the new run look finished the moment it starts."""
        for path in (self.exit_file, *self.oom_markers, self.conmon_pidfile, self.container_pidfile):
            path.unlink(missing_ok=True)


def conmon_argv(
    request: CreateRequest,
    files: MonitorFiles,
    runtime_binary: str,
    runtime_args: list[str],
    *,
    name: str | None = None,
) -> list[str]:
    """conmon's command line (podman ``sharedConmonArgs`` without systemd and exit command)."""
    argv = [
        str(CONMON_BINARY),
        "--api-version", "1",
        "-c", request.container_id,
        "-u", request.container_id,
        "-n", name or request.container_id,
        "-r", runtime_binary,
        "-b", str(request.bundle),
        "-p", str(files.container_pidfile),
        "--conmon-pidfile", str(files.conmon_pidfile),
        "--exit-dir", str(files.exit_dir),
        "--persist-dir", str(files.persist_dir),
        "--socket-dir-path", str(files.socket_dir),
        "-l", f"k8s-file:{request.log_path}",
        "--log-size-max", str(request.log_size_max),
        # attach socket path via /proc/self/fd: long run roots break sun_path's 108 bytes
        "--full-attach",
    ]  # fmt: skip
    if request.terminal:
        # a terminal is the container's stdin too; conmon never closes it
        argv.append("--terminal")
    elif request.stdin:
        argv.append("--stdin")
        if not request.stdin_once:
            argv.append("--leave-stdin-open")
    if not request.sync_log:
        argv.append("--no-sync-log")
    for arg in runtime_args:
        argv += ["--runtime-arg", arg]
    return argv


def _prepare_files(files: MonitorFiles) -> None:
    files.make_dirs()
    files.clear_previous_run()


def _parse_sync_line(raw: bytes, runtime_name: str) -> int:
    try:
        message = json.loads(raw.decode("utf-8", "replace"))
        pid = int(message["data"])
    except (ValueError, KeyError, TypeError):
        raise RuntimeFailure(f"conmon sent an unreadable sync message: {raw[:200]!r}") from None
    if pid <= 0:
        text = str(message.get("message") or "").strip() or "no error text"
        raise start_error(f"{runtime_name} create failed: {text}", text)
    return pid


async def _read_sync_line(stream: trio.lowlevel.FdStream) -> bytes:
    buf = b""
    while b"\n" not in buf and len(buf) < _SYNC_LINE_MAX:
        chunk = await stream.receive_some(4096)
        if not chunk:
            break
        buf += chunk
    return buf.split(b"\n", 1)[0]


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def runtime_environment(**extra: str) -> dict[str, str]:
    """The environment of conmon and of every runtime command. A daemon run as a systemd
    notify service must not hand its socket on: the runtime would pass it into the
    container and wait for the container's READY=1 (podman drops it the same way)."""
    env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
    env.update(extra)
    return env


async def _spawn(argv: list[str], cwd: Path, sync_w: int, start_r: int) -> trio.Process:
    env = runtime_environment(_OCI_SYNCPIPE=str(sync_w), _OCI_STARTPIPE=str(start_r))
    try:
        return await trio.lowlevel.open_process(
            argv,
            pass_fds=(sync_w, start_r),
            env=env,
            cwd=str(cwd),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
    except FileNotFoundError:
        raise Unavailable(f"{argv[0]} not found; install the conmon package") from None


async def _prepare_while_conmon_loads(proc: trio.Process, files: MonitorFiles,
                       prepare_bundle: Callable[[], Awaitable[None]] | None) -> None:
    """While conmon loads: its directories (cleared of the last run's files), and the
    bundle. conmon reads neither before its start pipe says so."""
    try:
        await trio.to_thread.run_sync(_prepare_files, files)
        if prepare_bundle is not None:
            await prepare_bundle()
    except BaseException:
        # Closing the pipe alone would not do: conmon takes EOF as the go-ahead.
        with trio.CancelScope(shield=True):
            proc.kill()
            await proc.wait()
            if proc.stderr is not None:
                await proc.stderr.aclose()
        raise


async def wait_first_process(proc: trio.Process, what: str = "start") -> None:
    """The first conmon process forks the monitor and exits; its stderr has early errors
    (raised as ``conmon failed to <what>``)."""
    assert proc.stderr is not None
    err = b""
    async with proc.stderr:
        while chunk := await proc.stderr.receive_some(65536):
            err += chunk
    rc = await proc.wait()
    if rc != 0:
        text = err.decode("utf-8", "replace").strip()
        raise RuntimeFailure(f"conmon failed to {what} (exit {rc}): {text}", runtime_error=text)


async def start_conmon(
    request: CreateRequest,
    runtime_binary: str,
    runtime_args: list[str],
    *,
    runtime_name: str,
    name: str | None = None,
    prepare_bundle: Callable[[], Awaitable[None]] | None = None,
) -> Created:
    """Run ``RUNTIME create`` under a new conmon; return once the container is *created*.

    ``prepare_bundle``: conmon is started first and told to go on (its start pipe) once
    this has run, so conmon's own start-up (~2 ms of loading and parsing) overlaps the
    preparation of the bundle. If it raises, conmon, still waiting on the pipe with
    nothing forked, is killed.

    Cancellation: safe at any point; a conmon that already forked keeps running and the
    caller cleans up with ``RUNTIME delete --force`` (it owns the container id).
    Errors: ``RuntimeFailure`` carrying the runtime's own error text; ``Unavailable`` when
    conmon is missing."""
    files = MonitorFiles(request.state_dir, request.container_id)
    argv = conmon_argv(request, files, runtime_binary, runtime_args, name=name)
    sync_r, sync_w = os.pipe2(os.O_CLOEXEC)
    start_r, start_w = os.pipe2(os.O_CLOEXEC)
    sync_stream = trio.lowlevel.FdStream(sync_r)  # owns sync_r from here on
    try:
        try:
            try:
                proc = await _spawn(argv, request.state_dir, sync_w, start_r)
            finally:
                # only conmon may hold the write end, or EOF never comes if conmon dies
                os.close(sync_w)
                os.close(start_r)
            await _prepare_while_conmon_loads(proc, files, prepare_bundle)
            os.write(start_w, b"\0")
        finally:
            os.close(start_w)
        await wait_first_process(proc)
        # conmon wrote its pid file before its first process exited: read it while the
        # runtime creates the container, not after.
        monitor: list[int | None] = []

        async def read_monitor_pid() -> None:
            monitor.append(await trio.to_thread.run_sync(_read_int, files.conmon_pidfile))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_monitor_pid)
            line = await _read_sync_line(sync_stream)
    finally:
        await sync_stream.aclose()
    if not line:
        raise RuntimeFailure(
            f"conmon for {request.container_id} exited without reporting the container pid; "
            f"see {request.log_path} and the system log"
        )
    container_pid = _parse_sync_line(line, runtime_name)
    return Created(container_pid=container_pid, monitor_pid=monitor[0] or 0)


# --- after the fact: exit file, oom marker, liveness ----------------------------------------


def read_exit(state_dir: Path, container_id: str) -> ExitInfo | None:
    """What conmon recorded once the container ended; None while it has not. Blocking.

    conmon writes 128+N for a container killed by signal N; ``signal`` is set for codes
    above 128 (a process that itself exits with such a code looks the same)."""
    files = MonitorFiles(state_dir, container_id)
    try:
        text = files.exit_file.read_text().strip()
        finished = files.exit_file.stat().st_mtime
    except FileNotFoundError:
        return None
    try:
        code = int(text)
    except ValueError:
        return None  # never half-written (g_file_set_contents renames) but be lenient
    oom = any(marker.exists() for marker in files.oom_markers)
    sig = code - 128 if 128 < code < 128 + 65 else None
    return ExitInfo(exit_code=code, oom_killed=oom, finished_at=finished, signal=sig)


def monitor_pid(state_dir: Path, container_id: str) -> int | None:
    """The live conmon of this container, or None (checked against /proc: pids get reused)."""
    pid = _read_int(MonitorFiles(state_dir, container_id).conmon_pidfile)
    if pid is None or pid <= 0:
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        stat_text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    if stat_text.rsplit(")", 1)[-1].split()[0] == "Z":
        return None  # exited; its new parent has not reaped it yet
    if not cmdline or not cmdline[0].endswith(b"conmon"):
        return None
    if container_id.encode() not in cmdline:
        return None
    return pid


async def _wait_pid_exit(pid: int) -> None:
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        await trio.lowlevel.wait_readable(pidfd)
    finally:
        os.close(pidfd)


async def wait_monitor_exit(state_dir: Path, container_id: str, *, poll: float = 0.05) -> ExitInfo:
    """Wait until conmon recorded the container's exit, and return it.

    Uses a pidfd on conmon (no polling) when it can, else polls the exit file.
    Cancellation: safe; nothing to clean up. Errors: ``RuntimeFailure`` if conmon is gone
    without writing the exit file."""
    while True:
        info = await trio.to_thread.run_sync(read_exit, state_dir, container_id)
        if info is not None:
            return info
        pid = await trio.to_thread.run_sync(monitor_pid, state_dir, container_id)
        if pid is None:
            # conmon may have written the file between our two looks
            info = await trio.to_thread.run_sync(read_exit, state_dir, container_id)
            if info is not None:
                return info
            raise RuntimeFailure(
                f"the monitor (conmon) of container {container_id} is gone and recorded no "
                f"exit code in {state_dir}; the exit status is lost"
            )
        if hasattr(os, "pidfd_open"):
            await _wait_pid_exit(pid)
        else:
            await trio.sleep(poll)
