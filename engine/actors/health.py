"""Health checks (docker's HEALTHCHECK / ``--health-*``), owned by the container actor.

A container with a check gets one probe loop per run, started with the run and cancelled
with it. Probes never overlap: the loop waits ``interval``, starts the probe as an exec
session through the actor (``ExecStart``, so it cannot race a stop or a removal), reads up
to 4 KiB of its output, kills it after ``timeout``, and posts the result to the actor as a
``HealthResult`` notice. The actor alone applies results to the status (``apply_result``):
the state is persisted and a ``health_status: <status>`` event emitted when it changes.

docker's rules: a run starts ``starting``; a probe exiting 0 makes it ``healthy`` and
resets the failing streak; a failure inside the start period does not count; otherwise it
adds to the streak, which at ``retries`` makes the container ``unhealthy``. The last five
results are kept with their output.
"""

from __future__ import annotations

import logging
import signal as signals
import time
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import trio

from engine.actors import commands as c
from engine.errors import EngineError, InvalidArgument

log = logging.getLogger("engine.health")

STARTING, HEALTHY, UNHEALTHY, NONE = "starting", "healthy", "unhealthy", "none"
DEFAULT_INTERVAL = 30.0
DEFAULT_TIMEOUT = 30.0
DEFAULT_RETRIES = 3
MAX_LOG_ENTRIES = 5
MAX_OUTPUT = 4096
NS = 1_000_000_000


@attrs.define
class HealthConfig:
    """docker's ``Healthcheck``: ``test`` is ``["CMD", arg...]`` or ``["CMD-SHELL", text]``;
    times are seconds (0: docker's default)."""

    test: list[str]
    interval: float = 0.0
    timeout: float = 0.0
    start_period: float = 0.0
    retries: int = 0

    def command(self) -> list[str]:
        kind, args = self.test[0], self.test[1:]
        if kind == "CMD-SHELL":
            return ["/bin/sh", "-c", " ".join(args)]
        return list(args)

    def to_docker(self) -> dict[str, Any]:
        return {"Test": list(self.test), "Interval": int(self.interval * NS),
                "Timeout": int(self.timeout * NS), "StartPeriod": int(self.start_period * NS),
                "Retries": self.retries}


@attrs.define
class ProbeResult:
    start: float
    end: float
    exit_code: int
    output: str


@attrs.define
class HealthState:
    status: str = STARTING
    failing_streak: int = 0
    log: list[ProbeResult] = attrs.field(factory=list)


def _seconds(ns: Any) -> float:
    return float(ns or 0) / NS


def docker_healthcheck(config: HealthConfig) -> dict[str, Any]:
    """The check as docker's ``Healthcheck`` object (times in nanoseconds, zero ones left
    out as dockerd leaves them): what inspect shows and ``commit`` records."""
    doc: dict[str, Any] = {"Test": list(config.test)}
    for key, seconds in (("Interval", config.interval), ("Timeout", config.timeout),
                         ("StartPeriod", config.start_period)):
        if seconds:
            doc[key] = round(seconds * NS)
    if config.retries:
        doc["Retries"] = config.retries
    return doc


def health_config(image_healthcheck: dict[str, Any] | None, *, cmd: str = "", interval: float | None = None,
                  timeout: float | None = None, start_period: float | None = None,
                  retries: int | None = None, disabled: bool = False,
                  test: list[str] | None = None) -> HealthConfig | None:
    """The container's check: the image's ``Healthcheck`` with the ``--health-*`` flags
    over it (docker's merge); None when there is none or it is disabled. ``test`` is a
    whole docker test (``["CMD", arg...]`` runs without a shell), ``cmd`` a shell one."""
    if disabled:
        if cmd or test:
            raise InvalidArgument("--no-healthcheck conflicts with --health-* options")
        return None
    for name, value in (("interval", interval), ("timeout", timeout), ("start-period", start_period)):
        if value is not None and value < 0:
            raise InvalidArgument(f"--health-{name} cannot be negative")
    if retries is not None and retries < 0:
        raise InvalidArgument("--health-retries cannot be negative")
    image = image_healthcheck or {}
    if test:
        test = list(test)
    elif cmd:
        test = ["CMD-SHELL", cmd]
    else:
        test = list(image.get("Test") or [])
    if not test or test[0] == "NONE":
        return None
    if test[0] not in ("CMD", "CMD-SHELL") or len(test) < 2:
        raise InvalidArgument(f"invalid healthcheck test {test!r}: expected CMD or CMD-SHELL and a command")
    return HealthConfig(
        test=test,
        interval=interval if interval is not None else _seconds(image.get("Interval")),
        timeout=timeout if timeout is not None else _seconds(image.get("Timeout")),
        start_period=start_period if start_period is not None else _seconds(image.get("StartPeriod")),
        retries=retries if retries is not None else int(image.get("Retries") or 0),
    )


def disabled_healthcheck(image_healthcheck: dict[str, Any] | None, *, disabled: bool = False,
                         test: list[str] | None = None, cmd: str = "") -> dict[str, Any] | None:
    """docker's ``Healthcheck`` of a container whose check is off (``--no-healthcheck``, a
    ``["NONE"]`` test, or an image's NONE one not overridden): ``{"Test": ["NONE"]}`` with
    the image's times, as dockerd merges them; None when the container has a check or
    neither it nor the image has any."""
    image = image_healthcheck or {}
    if disabled or (test and test[0] == "NONE"):
        pass
    elif test or cmd or (image.get("Test") or [])[:1] != ["NONE"]:
        return None
    doc: dict[str, Any] = {"Test": ["NONE"]}
    for key in ("Interval", "Timeout", "StartPeriod", "Retries"):
        if image.get(key):
            doc[key] = image[key]
    return doc


def apply_result(state: HealthState, config: HealthConfig, result: ProbeResult, run_started: float) -> bool:
    """docker's transition for one probe result; True when the status changed."""
    before = state.status
    state.log = (state.log + [result])[-MAX_LOG_ENTRIES:]
    if result.exit_code == 0:
        state.failing_streak = 0
        state.status = HEALTHY
    elif state.status == STARTING and result.start - run_started < config.start_period:
        pass  # failures while the container starts do not count
    else:
        state.failing_streak += 1
        if state.failing_streak >= (config.retries or DEFAULT_RETRIES):
            state.status = UNHEALTHY
    return state.status != before


class HealthMonitor:
    """The probe loop of one container (see the module docstring)."""

    def __init__(self, start_exec: Callable[[list[str]], Awaitable[c.ExecSession]],
                 notify: Callable[[c.Notice], None]) -> None:
        self._start_exec = start_exec
        self._notify = notify
        self._scope: trio.CancelScope | None = None

    def start(self, nursery: trio.Nursery, config: HealthConfig | None, run: int) -> None:
        self.stop()
        if config is None:
            return
        scope = trio.CancelScope()
        self._scope = scope
        nursery.start_soon(self._loop, scope, config, run)

    def stop(self) -> None:
        if self._scope is not None:
            self._scope.cancel()
            self._scope = None

    async def _loop(self, scope: trio.CancelScope, config: HealthConfig, run: int) -> None:
        with scope:
            while True:
                await trio.sleep(config.interval or DEFAULT_INTERVAL)
                result = await self._probe(config)
                if result is None:
                    return  # the container is not running any more
                self._notify(c.HealthResult(run, result))

    async def _probe(self, config: HealthConfig) -> ProbeResult | None:
        started = time.time()
        # Shielded: once asked for, the session is ours to close even if the run ends now.
        with trio.CancelScope(shield=True):
            try:
                session = await self._start_exec(config.command())
            except EngineError as e:
                log.debug("health probe not started: %s", e)
                return None
        timeout = config.timeout or DEFAULT_TIMEOUT
        code, output = -1, ""
        try:
            code, output = await _run_probe(session.handle, limit=timeout)
        finally:
            self._notify(c.ExecEnded(session.session, code))
        return ProbeResult(started, time.time(), code, output)


async def _run_probe(handle: Any, *, limit: float) -> tuple[int, str]:
    """Run one probe to its end or ``limit`` seconds: (exit code, output); -1 on timeout,
    as docker."""
    output = bytearray()
    open_streams = [2]
    closed = trio.Event()

    async def read(stream: Any) -> None:
        try:
            async for chunk in stream:
                if len(output) < MAX_OUTPUT:
                    output.extend(chunk[: MAX_OUTPUT - len(output)])
        finally:
            open_streams[0] -= 1
            if not open_streams[0]:
                closed.set()

    async with handle:  # leaving (timeout, cancellation) kills the probe
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read, handle.stdout)
            nursery.start_soon(read, handle.stderr)
            code: int | None = None
            with trio.move_on_after(limit):
                code = int(await handle.wait())
            if code is None:
                await handle.kill(signals.SIGKILL)
                nursery.cancel_scope.cancel()
                return -1, f"Health check exceeded timeout ({limit:g}s)"
            # a background child of the probe may hold the pipes: do not wait for it
            with trio.move_on_after(0.2):
                await closed.wait()
            nursery.cancel_scope.cancel()
    return code, output.decode(errors="replace")
