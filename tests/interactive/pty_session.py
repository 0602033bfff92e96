"""Drive engctl through a real pseudo-terminal, as a person at a terminal would: engctl's
stdio is the slave side (its controlling terminal, so resizing sends it SIGWINCH); the test
types on the master side and reads what the terminal shows."""

from __future__ import annotations

import fcntl
import os
import re
import select
import struct
import subprocess
import sys
import termios
import time

ENGCTL = [sys.executable, "-m", "engine.cli.main"]


def _make_controlling() -> None:
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class PtySession:
    def __init__(self, argv: list[str], host: str, *, rows: int = 24, cols: int = 80) -> None:
        self.master, self.slave = os.openpty()
        self.resize(rows, cols)
        env = {**os.environ, "ENGINE_HOST": host, "TERM": "xterm"}
        self.settings_before = self.stty_g()
        self.proc = subprocess.Popen(
            [*ENGCTL, *argv], stdin=self.slave, stdout=self.slave, stderr=self.slave, env=env,
            start_new_session=True, preexec_fn=_make_controlling, close_fds=True)
        self.seen = b""

    def stty_g(self) -> str:
        """The terminal's settings as ``stty -g`` prints them."""
        return subprocess.run(["stty", "-g"], stdin=self.slave, capture_output=True, text=True,
                              check=True, timeout=10).stdout.strip()

    def resize(self, rows: int, cols: int) -> None:
        fcntl.ioctl(self.master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    def send(self, data: bytes) -> None:
        os.write(self.master, data)

    def expect(self, pattern: bytes | str, timeout: float = 20.0) -> re.Match[bytes]:
        """Read until ``pattern`` (a regex) shows up in what was read since the last match."""
        regex = re.compile(pattern.encode() if isinstance(pattern, str) else pattern)
        deadline = time.monotonic() + timeout
        while True:
            match = regex.search(self.seen)
            if match:
                self.seen = self.seen[match.end():]
                return match
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{regex.pattern!r} not seen within {timeout}s; the terminal "
                                     f"shows {self.seen[-2000:]!r}")
            ready, _, _ = select.select([self.master], [], [], min(left, 0.5))
            if ready:
                try:
                    self.seen += os.read(self.master, 65536)
                except OSError:
                    pass

    def wait(self, timeout: float = 30.0) -> int:
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                self.proc.kill()
                raise AssertionError(f"engctl did not exit within {timeout}s; the terminal shows "
                                     f"{self.seen[-2000:]!r}")
            ready, _, _ = select.select([self.master], [], [], 0.1)
            if ready:
                try:
                    self.seen += os.read(self.master, 65536)
                except OSError:
                    pass
        return self.proc.returncode

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        for fd in (self.master, self.slave):
            try:
                os.close(fd)
            except OSError:
                pass
