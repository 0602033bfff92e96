"""engctl's attached sessions with input: ``run -i/-t``, ``start -ai``, ``exec -i/-t``,
``attach``. One thread and ``select``: no trio (engctl's start-up budget) and no threads.

The loop joins the daemon's duplex stream (engine.client.sync.DuplexStream) to this
process's stdio: output items are written out as they come; stdin is read only while the
daemon has credit for it (so a 50 MB pipe never piles up anywhere); the terminal's size is
sent at the start and on every SIGWINCH. With a terminal, the local one is put in raw mode
(keys, ctrl-c included, go to the container; the detach keys, ctrl-p ctrl-q by default, are
found by the daemon) and restored on every way out: the end of the session, an error, a
signal. Without one, signals engctl receives go to the container (``--sig-proxy``).
"""

from __future__ import annotations

import os
import select
import signal

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from engine.client.sync import DuplexStream

READ_SIZE = 65536  # one input item (engine.rpc.protocol.MAX_INPUT_ITEM)
# What --sig-proxy forwards (docker's list less the ones a shell sends itself or that a
# terminal session needs: SIGCHLD, SIGPIPE, SIGWINCH, SIGURG, SIGSTOP/TSTP/TTIN/TTOU).
PROXIED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
           signal.SIGUSR2, signal.SIGALRM)
# With a terminal the keys carry ctrl-c; these end the session (and restore the terminal).
ENDING = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT, signal.SIGQUIT)


class SessionEnded(Exception):
    """engctl got a signal that ends an attached session with a terminal."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"signal {signum}")
        self.signum = signum


def terminal_size() -> tuple[int, int] | None:
    """(rows, cols) of the terminal on stdout, else on stdin; None without one."""
    for fd in (1, 0, 2):
        try:
            size = os.get_terminal_size(fd)
        except OSError:
            continue
        return size.lines, size.columns
    return None


class RawTerminal:
    """The terminal on ``fd`` in raw mode while the block runs; its settings restored after,
    whatever happens (tcsetattr with TCSADRAIN: output written before is not cut)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._saved: list[Any] | None = None

    def __enter__(self) -> RawTerminal:
        import termios
        import tty

        self._saved = termios.tcgetattr(self.fd)
        tty.setraw(self.fd, termios.TCSANOW)
        return self

    def __exit__(self, *exc: object) -> None:
        import termios

        if self._saved is not None:
            termios.tcsetattr(self.fd, termios.TCSADRAIN, self._saved)
            self._saved = None


class _Signals:
    """Signals turned into bytes on a pipe (``set_wakeup_fd``) for the select loop; the
    previous handlers and wakeup fd come back on exit."""

    def __init__(self, signums: tuple[int, ...]) -> None:
        self.signums = signums
        self.read_fd = -1
        self._write_fd = -1
        self._old: dict[int, Any] = {}
        self._old_wakeup = -1

    def __enter__(self) -> _Signals:
        self.read_fd, self._write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        for signum in self.signums:
            self._old[signum] = signal.signal(signum, _ignore)
        self._old_wakeup = signal.set_wakeup_fd(self._write_fd, warn_on_full_buffer=False)
        return self

    def received(self) -> list[int]:
        try:
            return list(os.read(self.read_fd, 256))
        except BlockingIOError:
            return []

    def __exit__(self, *exc: object) -> None:
        signal.set_wakeup_fd(self._old_wakeup)
        for signum, handler in self._old.items():
            signal.signal(signum, handler)
        os.close(self.read_fd)
        os.close(self._write_fd)


def _ignore(signum: int, frame: Any) -> None:
    """The handler of a signal the loop reads from the wakeup pipe."""


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except BlockingIOError:
            select.select([], [fd], [])
            continue
        view = view[n:]


def _emit(items: list[Any]) -> None:
    for item in items:
        data = item.get("data") if isinstance(item, dict) else None
        if data:
            _write_all(2 if item.get("stream") == "stderr" else 1,
                       data if isinstance(data, bytes) else str(data).encode())


def run_session(duplex: DuplexStream, *, stdin: bool, tty: bool, sig_proxy: bool = True) -> dict[str, Any]:
    """Pump the session until the daemon ends it; its result (``ExitCode``, or
    ``Detached``). ``stdin``: send ours (to its end: then ``eof``); ``tty``: the container
    has a terminal (ours goes raw if stdin is one, and its size follows ours)."""
    raw = tty and stdin and os.isatty(0)
    signums: tuple[int, ...] = ()
    if tty:
        signums = (signal.SIGWINCH, *ENDING)
    elif sig_proxy:
        signums = PROXIED
    with _raw_if(raw), _Signals(signums) as signals:
        if tty and (size := terminal_size()) is not None:
            duplex.resize(*size)
        _loop(duplex, signals, stdin=stdin, tty=tty, sig_proxy=sig_proxy)
    return duplex.result or {}


class _raw_if:
    def __init__(self, raw: bool) -> None:
        self._terminal = RawTerminal(0) if raw else None

    def __enter__(self) -> None:
        if self._terminal is not None:
            self._terminal.__enter__()

    def __exit__(self, *exc: object) -> None:
        if self._terminal is not None:
            self._terminal.__exit__()


def _loop(duplex: DuplexStream, signals: _Signals, *, stdin: bool, tty: bool, sig_proxy: bool) -> None:
    sock = duplex.fileno()
    stdin_open = stdin
    while not duplex.done:
        if duplex.buffered():
            _emit(duplex.pump())
            continue
        watch = [sock, signals.read_fd]
        if stdin_open and duplex.credit > 0:
            watch.append(0)
        ready, _, _ = select.select(watch, [], [])
        if sock in ready:
            _emit(duplex.pump())
        if signals.read_fd in ready:
            for signum in signals.received():
                _on_signal(duplex, signum, tty=tty, sig_proxy=sig_proxy)
        if 0 in ready and not duplex.done:
            try:
                data = os.read(0, READ_SIZE)
            except BlockingIOError:
                continue
            if data:
                duplex.write(data)
            else:
                stdin_open = False
                duplex.close_stdin()
    _emit(duplex.pump())


def _on_signal(duplex: DuplexStream, signum: int, *, tty: bool, sig_proxy: bool) -> None:
    if signum == signal.SIGWINCH:
        if (size := terminal_size()) is not None:
            duplex.resize(*size)
    elif tty:
        duplex.cancel()  # the container runs on, as after a detach
        raise SessionEnded(signum)
    elif sig_proxy:
        duplex.signal(signum)


def exit_code(result: dict[str, Any]) -> int:
    if result.get("Detached"):
        return 0
    return int(result.get("ExitCode", 0))


def session_exit(run: Any) -> int:
    """Run a session function; its exit code (128+N when signal N ended it)."""
    try:
        return exit_code(run())
    except SessionEnded as e:
        return 128 + e.signum

