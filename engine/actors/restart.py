"""Restart policies as a pure function: the one place that decides whether a container that
is not running should run again (containerd's restart.go and moby's restartmanager, with
backoff).

``decide`` looks at the policy, how the container ended and its restart history, and says
whether to restart and after how long: exponential backoff (100 ms doubling, capped at
60 s) with jitter, reset once a run has lasted ``RESET_AFTER`` seconds.

Two moments ask it, with docker's semantics for each:

- the runtime reported an exit (``daemon_starting=False``): a container the user stopped is
  never restarted; otherwise the policy decides;
- the daemon starts and finds the container not running (``daemon_starting=True``):
  ``always`` starts it even if the user had stopped it, ``unless-stopped`` only if the user
  had not, ``on-failure[:N]`` if it failed and has retries left; no delay.
"""

from __future__ import annotations

import random

import attrs

from engine.errors import InvalidArgument

BASE_DELAY = 0.1
MAX_DELAY = 60.0
RESET_AFTER = 10.0
NAMES = ("no", "on-failure", "always", "unless-stopped")


@attrs.frozen
class RestartPolicy:
    name: str = "no"
    max_retries: int = 0  # on-failure only; 0 means unlimited

    @classmethod
    def parse(cls, text: str | None) -> RestartPolicy:
        text = (text or "no").strip()
        name, _, count = text.partition(":")
        if name not in NAMES:
            raise InvalidArgument(
                f"invalid restart policy {text!r}: use no, on-failure[:N], always or unless-stopped"
            )
        if count:
            if name != "on-failure":
                raise InvalidArgument(f"restart policy {name} takes no retry count ({text!r})")
            if not count.isdigit():
                raise InvalidArgument(f"invalid retry count in restart policy {text!r}")
        return cls(name, int(count or 0))

    def __str__(self) -> str:
        return f"{self.name}:{self.max_retries}" if self.name == "on-failure" and self.max_retries else self.name


@attrs.frozen
class Restart:
    delay: float
    reason: str


@attrs.frozen
class NoRestart:
    reason: str


def decide(
    policy: RestartPolicy,
    *,
    exit_code: int,
    stopped_by_user: bool,
    restart_count: int,
    run_seconds: float,
    daemon_starting: bool = False,
    rng: random.Random | None = None,
) -> Restart | NoRestart:
    if policy.name == "no":
        return NoRestart("restart policy is no")
    if stopped_by_user and not (daemon_starting and policy.name == "always"):
        return NoRestart("stopped by the user")
    if policy.name == "on-failure":
        if exit_code == 0:
            return NoRestart("exited successfully (on-failure)")
        if policy.max_retries and restart_count >= policy.max_retries:
            return NoRestart(f"gave up after {restart_count} restarts (on-failure:{policy.max_retries})")
    what = "signal " + str(exit_code - 128) if exit_code > 128 else f"code {exit_code}"
    if daemon_starting:
        return Restart(0.0, f"daemon start (exited with {what}); policy {policy}")
    # Backoff grows with consecutive quick failures; a long healthy run resets it.
    attempt = 0 if run_seconds >= RESET_AFTER else restart_count
    delay = min(MAX_DELAY, BASE_DELAY * (2**attempt))
    delay *= 1 + 0.1 * (rng or random).random()
    return Restart(delay, f"exited with {what}; policy {policy}")
