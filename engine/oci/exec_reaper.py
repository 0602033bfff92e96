"""Run ``RUNTIME exec --detach`` and wait for the exec'd process as its subreaper.

Run as a script (stdlib only, ``python -S -E exec_reaper.py RUNTIME ARGS... --pid-file P ID``):
it marks itself a child subreaper, runs the runtime's ``exec --detach`` (the process
inherits this script's stdio: the daemon's pipes), and, once the runtime has written the
pid file and exited, waits for that process, which the kernel re-parents to this script.
It exits with the process's code (128+N when killed by signal N), or with the runtime's own
code when the runtime failed (its message is on stderr).

Why: a non-detached ``runc exec`` copies the process's output through pipes of its own and
does not return until every holder of them closes them, so a command that leaves a process
in the background (``sh -c 'server &'``) would never be seen to end. docker's exec returns
when the command does, and what it started keeps running in the container.
"""

from __future__ import annotations

import ctypes
import os
import sys

PR_SET_CHILD_SUBREAPER = 36


def main(argv: list[str]) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        print("exec: cannot become a child subreaper", file=sys.stderr)
        return 255
    pid_file = argv[argv.index("--pid-file") + 1]
    runtime = os.fork()
    if runtime == 0:
        try:
            os.execv(argv[0], argv)
        finally:
            os._exit(127)
    target: int | None = None
    runtime_status: int | None = None
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            return 255 if runtime_status is None else runtime_status
        code = os.waitstatus_to_exitcode(status)
        code = 128 - code if code < 0 else code
        if pid == runtime:
            if code != 0:
                return code
            runtime_status = code
            try:
                with open(pid_file) as f:
                    target = int(f.read().strip())
            except (OSError, ValueError):
                print(f"exec: the runtime wrote no pid file at {pid_file}", file=sys.stderr)
                return 255
            if target in exited:
                return exited[target]
        elif target is not None and pid == target:
            return code
        else:
            exited[pid] = code  # the process may end (and be reaped) before the pid file is read


exited: dict[int, int] = {}

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
