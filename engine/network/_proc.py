"""Running the host tools networking needs (ip, iptables, unshare, mount, CNI plugins)."""

from __future__ import annotations

import subprocess
from collections.abc import Mapping, Sequence

import trio

from engine.errors import RuntimeFailure, Timeout, Unavailable

DEFAULT_TIMEOUT = 30.0


async def run(
    argv: Sequence[str],
    *,
    stdin: bytes = b"",
    env: Mapping[str, str] | None = None,
    time_limit: float = DEFAULT_TIMEOUT,
    check: bool = True,
) -> subprocess.CompletedProcess[bytes]:
    """Run ``argv`` to completion with a deadline, capturing its output.

    ``check`` raises RuntimeFailure carrying the tool's own stderr, so the person reading
    the error sees what the tool said rather than only an exit code."""
    try:
        with trio.fail_after(time_limit):
            proc = await trio.run_process(
                list(argv), stdin=stdin, capture_stdout=True, capture_stderr=True,
                env=dict(env) if env is not None else None, check=False,
            )
    except FileNotFoundError:
        raise Unavailable(
            f"{argv[0]} is not installed; install it (Debian: apt-get install the package "
            f"providing {argv[0]})"
        ) from None
    except trio.TooSlowError:
        raise Timeout(f"{' '.join(argv)} did not finish within {time_limit:.0f}s") from None
    if check and proc.returncode != 0:
        raise RuntimeFailure(
            f"{' '.join(argv)} failed (exit {proc.returncode}): "
            f"{proc.stderr.decode(errors='replace').strip() or proc.stdout.decode(errors='replace').strip()}"
        )
    return proc
