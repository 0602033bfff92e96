"""The docker CLI through a real pseudo-terminal (its stdio the slave side, its controlling
terminal), as a person at a terminal runs it; the test types on the master side."""

from __future__ import annotations

import os
import subprocess

from tests.interactive.pty_session import PtySession, _make_controlling


class DockerPty(PtySession):
    def __init__(self, argv: list[str], env: dict[str, str], *, rows: int = 24, cols: int = 80) -> None:
        self.master, self.slave = os.openpty()
        self.resize(rows, cols)
        self.settings_before = self.stty_g()
        self.proc = subprocess.Popen(
            argv, stdin=self.slave, stdout=self.slave, stderr=self.slave, env={**env, "TERM": "xterm"},
            start_new_session=True, preexec_fn=_make_controlling, close_fds=True)
        self.seen = b""
