"""Interleaved whole-process timing.

Rows run round-robin (A B C, B C A, C A B, ...) so that drifts in machine speed hit every row
alike; ratios are taken round by round against the first row (the baseline) and their median
is the figure quoted, as in shared/peers/pairtime.py.
"""

from __future__ import annotations

import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from typing import Any

import attrs

Action = Callable[[], None]


class StepFailed(Exception):
    """A timed or preparation step exited non-zero (the message says which and why)."""


def run_quiet(argv: Sequence[str], *, timeout: float = 300.0, env: dict[str, str] | None = None,
              check: bool = True) -> subprocess.CompletedProcess[bytes]:
    """Run a command with stdout discarded; raise StepFailed with its stderr tail on failure."""
    p = subprocess.run(list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE, timeout=timeout, env=env)
    if check and p.returncode != 0:
        tail = p.stderr[-600:].decode(errors="replace").strip()
        raise StepFailed(f"{' '.join(argv)} exited {p.returncode}: {tail}")
    return p


def command(argv: Sequence[str], *, timeout: float = 300.0,
            env: dict[str, str] | None = None) -> Action:
    """An action running one command (stdout discarded, non-zero exit is a failure)."""
    args = list(argv)

    def act() -> None:
        run_quiet(args, timeout=timeout, env=env)

    return act


@attrs.define
class Row:
    label: str
    action: Action
    prep: Action | None = None  # untimed, before every run of this row
    group: str = ""  # engine family, for the plot's colours
    cmd: str = ""  # what is timed, for the published tables


@attrs.define
class RowResult:
    label: str
    group: str
    cmd: str
    times: list[float] = attrs.field(factory=list)
    fails: int = 0
    last_error: str | None = None
    ratios: list[float] = attrs.field(factory=list)

    def ok_times(self) -> list[float]:
        return [t for t in self.times if t == t]  # NaN marks a failed run

    def summary(self) -> dict[str, Any]:
        t = self.ok_times()
        r = [x for x in self.ratios if x == x]
        return {
            "label": self.label, "group": self.group, "cmd": self.cmd,
            "times": self.times, "fails": self.fails, "last_error": self.last_error,
            "median": statistics.median(t) if t else None,
            "min": min(t) if t else None, "max": max(t) if t else None,
            "ratio_median": statistics.median(r) if r else None,
            "ratio_min": min(r) if r else None, "ratio_max": max(r) if r else None,
        }


def _timed(row: Row) -> tuple[float, str | None]:
    if row.prep is not None:
        try:
            row.prep()
        except Exception as e:  # noqa: BLE001 - recorded per row; one broken peer must not stop the run
            return float("nan"), f"prep: {e}"
    t0 = time.monotonic()
    try:
        row.action()
    except Exception as e:  # noqa: BLE001
        return float("nan"), str(e)
    return time.monotonic() - t0, None


def interleave(rows: Sequence[Row], rounds: int, warmup: int = 1,
               log: Callable[[str], None] = print) -> list[RowResult]:
    """Time every row ``rounds`` times, interleaved, after ``warmup`` unmeasured rounds.

    A failed run is kept as NaN (so rounds stay aligned for the ratios) and counted. A row
    that failed every warm-up run is dropped from later rounds: it would only waste time."""
    results = [RowResult(r.label, r.group, r.cmd) for r in rows]
    dead: set[int] = set()
    k = len(rows)
    for rnd in range(warmup + rounds):
        for j in range(k):
            i = (rnd + j) % k
            res = results[i]
            if i in dead:
                if rnd >= warmup:
                    res.times.append(float("nan"))
                continue
            dt, err = _timed(rows[i])
            if err is not None:
                res.fails += 1
                res.last_error = err[-800:]
            if rnd < warmup:
                if err is not None and rnd == warmup - 1 and res.fails == warmup:
                    dead.add(i)
                    log(f"  {res.label}: failing ({err[-300:]}); skipped from now on")
                continue
            res.times.append(dt)
        if rnd >= warmup:
            log(f"  round {rnd - warmup + 1}/{rounds} done")
    base = results[0].times
    for res in results:
        res.ratios = [x / y if y == y and x == x and y > 0 else float("nan")
                      for x, y in zip(res.times, base, strict=True)]
    return results
