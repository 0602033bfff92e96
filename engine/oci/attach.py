"""Terminals and stdin of containers run under conmon, and of TTY execs.

A container's main process: conmon (``-t`` for a pseudo-terminal, ``-i`` for a stdin pipe)
serves an attach socket at ``<bundle>/attach`` (``--full-attach``): a unix
``SOCK_SEQPACKET`` socket where every message conmon sends is one chunk of output whose
first byte names the stream (2 stdout, 3 stderr; a terminal's output is all stdout), and
every message a client sends is written to the container's stdin (at most 32 KiB - 1 a
message: conmon reads each into a 32 KiB buffer). A client that shuts its sending side
makes conmon close the container's stdin, unless conmon runs with ``--leave-stdin-open``
(or the container has a terminal: a terminal is never closed). The window size of a
terminal goes to conmon's control fifo ``<bundle>/ctl`` as ``"1 ROWS COLS\\n"``.

A TTY exec: the runtime is given ``--console-socket``: it sends the master side of the exec's
pseudo-terminal to that socket (``SCM_RIGHTS``), and the engine keeps it (output, input and
window size all go through it) for as long as the exec runs.

Paths: a unix socket path must fit in 108 bytes and run roots can be long, so sockets are
reached as ``/proc/self/fd/<directory fd>/<name>`` (conmon binds its own the same way).
"""

from __future__ import annotations

import array
import errno
import fcntl
import os
import socket
import struct
import termios
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import trio

from engine.errors import Conflict, InvalidArgument, RuntimeFailure

ATTACH_SOCKET = "attach"
CONTROL_FIFO = "ctl"
PIPE_NAMES = {1: "stdin", 2: "stdout", 3: "stderr"}
# conmon reads a client's message into a 32 KiB buffer (less one byte): never send more.
STDIN_MESSAGE = 8192
RECEIVE_SIZE = 65536  # conmon's output messages are at most 8 KiB + 1
MAX_WINDOW = 1000  # conmon refuses rows or columns above this
WIN_RESIZE_EVENT = 1


def check_window(rows: int, cols: int) -> tuple[int, int]:
    if not (0 <= rows <= MAX_WINDOW and 0 <= cols <= MAX_WINDOW):
        raise InvalidArgument(f"invalid window size {rows}x{cols}: rows and columns go from 0 to {MAX_WINDOW}")
    return rows, cols


@contextmanager
def _directory_fd(directory: Path) -> Iterator[str]:
    """``directory`` as a short path (``/proc/self/fd/N``) while the block runs."""
    fd = os.open(directory, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield f"/proc/self/fd/{fd}"
    finally:
        os.close(fd)


class ConmonAttach:
    """One client connection to a container's conmon attach socket.

    ``receive()`` gives ``(stream, data)`` chunks of output and None once conmon is gone
    (the container ended and its output was all sent). ``write(data)`` feeds the container's
    stdin; it waits while conmon cannot take more (backpressure reaches the client).
    ``close_stdin()`` shuts the sending side (conmon then closes the container's stdin,
    unless told to leave it open). ``aclose()`` drops the connection."""

    def __init__(self, sock: trio.socket.SocketType) -> None:
        self._sock = sock
        self._stdin_closed = False

    @classmethod
    async def connect(cls, bundle: Path) -> ConmonAttach:
        """Errors: ``Conflict`` when there is no attach socket (the container is not running
        under a monitor that serves one)."""
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        try:
            with _directory_fd(bundle) as short:
                await sock.connect(f"{short}/{ATTACH_SOCKET}")
        except FileNotFoundError:
            sock.close()
            raise Conflict(f"no attach socket in {bundle}: the container is not running") from None
        except ConnectionRefusedError:
            sock.close()
            raise Conflict(f"the attach socket in {bundle} refused the connection: the container "
                           "has exited") from None
        except BaseException:
            sock.close()
            raise
        return cls(sock)

    async def receive(self) -> tuple[str, bytes] | None:
        try:
            data = await self._sock.recv(RECEIVE_SIZE)
        except ConnectionResetError:
            # conmon closed its end with input of ours unread: the kernel reports that
            # first, once, but the output it sent before is still queued here
            try:
                data = await self._sock.recv(RECEIVE_SIZE)
            except (ConnectionResetError, BrokenPipeError):
                return None
        except BrokenPipeError:
            return None
        if not data:
            return None
        return PIPE_NAMES.get(data[0], "stdout"), data[1:]

    async def write(self, data: bytes) -> None:
        """Errors: ``Conflict`` once the container's stdin is gone (conmon closed the socket)."""
        if self._stdin_closed:
            return
        view = memoryview(data)
        try:
            for start in range(0, len(view), STDIN_MESSAGE):
                await self._sock.send(view[start:start + STDIN_MESSAGE])
        except (BrokenPipeError, ConnectionResetError):
            raise Conflict("the container's stdin is closed (it exited)") from None

    def close_stdin(self) -> None:
        if self._stdin_closed:
            return
        self._stdin_closed = True
        try:
            self._sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # conmon went away first

    async def aclose(self) -> None:
        self._sock.close()
        await trio.lowlevel.checkpoint()


def write_control_nowait(bundle: Path, message: bytes) -> None:
    """Write ``message`` to conmon's control fifo in ``bundle`` (``ctl``). It never blocks
    (the fifo is opened and written non-blocking). Errors: ``Conflict`` when no conmon reads
    it; ``RuntimeFailure`` when it is full."""
    _write_control(bundle, message)


def _write_control(bundle: Path, message: bytes) -> None:
    with _directory_fd(bundle) as short:
        try:
            fd = os.open(f"{short}/{CONTROL_FIFO}", os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as e:
            # no fifo, or ENXIO: nobody reads it (conmon is gone)
            if e.errno in (errno.ENOENT, errno.ENXIO):
                raise Conflict(f"no terminal control fifo in {bundle}: the container is not running") from None
            raise
    try:
        os.write(fd, message)  # a few bytes: one atomic write to a fifo
    except BlockingIOError:
        raise RuntimeFailure(f"conmon's control fifo in {bundle} is full; the resize was dropped") from None
    finally:
        os.close(fd)


async def resize_conmon_terminal(bundle: Path, rows: int, cols: int) -> None:
    """Tell conmon the window size of the container's terminal."""
    check_window(rows, cols)
    await trio.to_thread.run_sync(_write_control, bundle, f"{WIN_RESIZE_EVENT} {rows} {cols}\n".encode())


# --- TTY execs: the pseudo-terminal's master in the engine's hands ------------------------------


def set_window(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


class ConsoleSocket:
    """A listening socket for ``--console-socket``: ``path`` to give the runtime,
    ``receive()`` the master fd it sends. Close it when done (it unlinks itself)."""

    def __init__(self, directory: Path, name: str) -> None:
        self._dir_fd = os.open(directory, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        self._name = name
        # The runtime is another process: it reaches our directory fd through our pid.
        self.path = f"/proc/{os.getpid()}/fd/{self._dir_fd}/{name}"
        self._sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        self._bound = False

    async def listen(self) -> None:
        await self._sock.bind(f"/proc/self/fd/{self._dir_fd}/{self._name}")
        self._bound = True
        self._sock.listen(1)

    async def receive(self) -> int:
        """The first fd a connecting runtime sends."""
        conn, _ = await self._sock.accept()
        with conn:
            fds = array.array("i")
            _, ancdata, _, _ = await conn.recvmsg(4096, socket.CMSG_SPACE(fds.itemsize))
            for level, kind, data in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds.frombytes(data[: len(data) - (len(data) % fds.itemsize)])
        if not fds:
            raise RuntimeFailure("the runtime connected to the console socket but sent no terminal")
        for extra in fds[1:]:
            os.close(extra)
        os.set_inheritable(fds[0], False)
        return fds[0]

    def close(self) -> None:
        self._sock.close()
        if self._bound:
            try:
                os.unlink(self._name, dir_fd=self._dir_fd)
            except FileNotFoundError:
                pass
        os.close(self._dir_fd)


class TerminalReader(trio.abc.ReceiveStream):
    """The master side of a pseudo-terminal as a receive stream: once every process holding
    the other side is gone the kernel says EIO, which is the end of the output here."""

    def __init__(self, stream: trio.lowlevel.FdStream) -> None:
        self._stream = stream

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        try:
            return await self._stream.receive_some(max_bytes)
        except OSError as e:
            if e.errno == errno.EIO:
                return b""
            raise
        except trio.BrokenResourceError as e:
            if isinstance(e.__cause__, OSError) and e.__cause__.errno == errno.EIO:
                return b""
            raise

    async def aclose(self) -> None:
        await self._stream.aclose()
