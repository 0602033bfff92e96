"""Pure parts of supervision: the restart decision and the state table."""

from __future__ import annotations

import random

import pytest

from engine.actors.logs import RecordParser, read_records
from engine.actors.restart import MAX_DELAY, NoRestart, Restart, RestartPolicy, decide
from engine.actors.state import TRANSITIONS, ContainerState, can_transition, require_state
from engine.errors import Conflict, InvalidArgument


@pytest.mark.parametrize("text, name, retries", [
    ("no", "no", 0), ("always", "always", 0), ("unless-stopped", "unless-stopped", 0),
    ("on-failure", "on-failure", 0), ("on-failure:3", "on-failure", 3), (None, "no", 0),
])
def test_parse_policy(text: str | None, name: str, retries: int) -> None:
    policy = RestartPolicy.parse(text)
    assert (policy.name, policy.max_retries) == (name, retries)


@pytest.mark.parametrize("text", ["sometimes", "always:3", "on-failure:x", "on-failure:-1"])
def test_bad_policies_are_refused(text: str) -> None:
    with pytest.raises(InvalidArgument, match="restart policy|retry count"):
        RestartPolicy.parse(text)


def verdict(policy: str, code: int = 1, count: int = 0, run: float = 0.5, user: bool = False) -> Restart | NoRestart:
    return decide(RestartPolicy.parse(policy), exit_code=code, stopped_by_user=user,
                  restart_count=count, run_seconds=run, rng=random.Random(1))


def test_decisions() -> None:
    assert isinstance(verdict("no"), NoRestart)
    assert isinstance(verdict("always", user=True), NoRestart)
    assert isinstance(verdict("on-failure", code=0), NoRestart)
    assert isinstance(verdict("on-failure:2", count=2), NoRestart)
    assert "gave up after 2" in verdict("on-failure:2", count=2).reason
    r = verdict("on-failure:2", count=1, code=3)
    assert isinstance(r, Restart) and "code 3" in r.reason
    assert "signal 9" in verdict("always", code=137).reason


def test_backoff_doubles_caps_and_resets_after_a_healthy_run() -> None:
    delays = [verdict("always", count=n).delay for n in range(12)]  # type: ignore[union-attr]
    assert all(b > a for a, b in zip(delays[:8], delays[1:9], strict=True))
    assert delays[0] < 0.2 and max(delays) <= MAX_DELAY * 1.1
    assert verdict("always", count=10, run=60).delay < 0.2  # type: ignore[union-attr]


def test_state_table_and_conflict_messages() -> None:
    S = ContainerState
    for state in S:
        assert can_transition(state, state)
        assert state in TRANSITIONS
    assert not can_transition(S.EXITED, S.PAUSED)
    assert can_transition(S.RUNNING, S.RESTARTING)
    with pytest.raises(Conflict, match=r"cannot pause container web: it is exited \(must be running\)"):
        require_state("web", S.EXITED, S.RUNNING, action="pause")


def test_log_records_join_partials_and_tail(tmp_path) -> None:  # type: ignore[no-untyped-def]
    log = tmp_path / "ctr.log"
    log.write_bytes(
        b"2026-01-01T00:00:00.000000001+00:00 stdout F one\n"
        b"2026-01-01T00:00:01.5Z stderr P par\n"
        b"2026-01-01T00:00:01.6Z stderr F tial\n"
        b"2026-01-01T00:00:02Z stdout F three\n"
        b"2026-01-01T00:00:03Z stdout F incomplete-no-newline"
    )
    records, offset = read_records(log)
    assert [(r.stream, r.text) for r in records] == [
        ("stdout", b"one\n"), ("stderr", b"partial\n"), ("stdout", b"three\n")]
    assert offset == log.stat().st_size - len(b"2026-01-01T00:00:03Z stdout F incomplete-no-newline")
    assert [r.text for r in read_records(log, tail=1)[0]] == [b"three\n"]
    assert read_records(log, tail=0)[0] == []
    since = records[1].time
    assert [r.text for r in read_records(log, since=since)[0]] == [b"partial\n", b"three\n"]
    assert RecordParser().feed_line(b"garbage\n") is None
