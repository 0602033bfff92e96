"""Logs are rotated by default and followers cross rotations: a container writing numbered
lines as fast as it can under max-size=1m,max-file=3 keeps its files within 3 MiB (plus one
write), a concurrent `logs -f` gets a gap-free, duplicate-free run of numbers, and `logs`
afterwards returns the last lines in order."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from engine.errors import InvalidArgument
from engine.testing.daemon import Daemon

from .conftest import start_engine

MiB = 1024 * 1024
WRITER = "i=0; while :; do echo $i; i=$((i+1)); done"


def log_files(log_path: Path) -> dict[str, int]:
    """The log's files on disk, each inode once (hard links are the engine's bookkeeping)."""
    sizes: dict[int, tuple[str, int]] = {}
    links = log_path.parent / ".log-links"
    for path in [*log_path.parent.glob(log_path.name + "*"), links / "current", links / "next"]:
        try:
            st = path.stat()
        except FileNotFoundError:
            continue
        sizes.setdefault(st.st_ino, (path.name, st.st_size))
    return dict(sizes.values())


def numbers(items: list[dict]) -> list[int]:
    return [int(i["data"]) for i in items]


def numbers_across_gaps(items: list[dict]) -> tuple[list[int], list[bytes]]:
    """The numbers a follower that fell behind the rotation got, and the line fragments it
    got at the gaps. conmon may split a line between two files (a ``P`` part, then its
    ``F`` end in the next file); the engine marks such files so a reader that skipped the
    file before drops the stray end, but a rotator that lags a writer this fast can miss a
    switch, and the end of a line whose start was rotated away then comes through: the
    number's last digits, or just the newline. Such a fragment sits right after a gap and is
    a suffix of the number before the next whole line."""
    texts = [bytes(i["data"]) if not isinstance(i["data"], str) else i["data"].encode() for i in items]
    seq: list[int] = []
    fragments: list[bytes] = []
    for index, text in enumerate(texts):
        body = text.rstrip(b"\n")
        following = texts[index + 1].rstrip(b"\n") if index + 1 < len(texts) else b""
        after_gap = not seq or not body.isdigit() or int(body) != seq[-1] + 1
        if after_gap and following.isdigit() and (
            not body.isdigit() or str(int(following) - 1).encode().endswith(body)
            and int(following) != int(body) + 1
        ):
            fragments.append(text)
            continue
        seq.append(int(body))
    return seq, fragments


def test_fast_writer_is_capped_and_followed_without_gaps(busybox_archive: Path) -> None:
    d = start_engine(busybox_archive, "runc")
    try:
        cid = d.call("container.create", image="busybox", name="chatty", cmd=["sh", "-c", WRITER],
                     log_opts={"max-size": "1m", "max-file": "3"})["Id"]
        d.call("container.start", id=cid)
        log_path = Path(d.call("container.inspect", id=cid)["LogPath"])
        followed: list[dict] = []
        errors: list[BaseException] = []

        def follow() -> None:
            try:
                with d.client(timeout=None) as c:
                    for item in c.stream("container.logs", id=cid, follow=True):
                        followed.append(item)
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)

        follower = threading.Thread(target=follow, daemon=True)
        follower.start()
        def followed_far_enough() -> bool:  # as the assertion below wants it
            last = followed[-1]["data"].strip() if followed else b""
            return last.isdigit() and int(last) > 20 * LINES_PER_MIB

        biggest = 0
        # 30 s of writing, longer (2 min at most) if a loaded machine slowed the writer
        # before it wrote enough for the rotation to have been exercised
        deadline, give_up = time.monotonic() + 30, time.monotonic() + 120
        while time.monotonic() < deadline or (not followed_far_enough() and time.monotonic() < give_up):
            total = sum(log_files(log_path).values())
            biggest = max(biggest, total)
            time.sleep(0.02)
        d.call("container.stop", id=cid, timeout=0)
        follower.join(60)
        assert not follower.is_alive() and not errors, errors

        files = log_files(log_path)
        assert len([n for n in files if n != "ctr.log.tmp" and n != "next"]) <= 3, files
        # one write: a line and its k8s-file prefix, well under 1 KiB here
        assert biggest <= 3 * MiB + 1024, (biggest, files)

        seq, fragments = numbers_across_gaps(followed)
        assert len(seq) > 10_000 and seq[-1] > 20 * LINES_PER_MIB, "the writer was too slow to rotate much"
        # never a repeat, never out of order
        assert all(b > a for a, b in zip(seq, seq[1:], strict=False)), _breaks(seq)[:5]
        assert len(fragments) <= len(_breaks(seq)), (fragments[:5], _breaks(seq)[:5])
        # A follower slower than the writer falls behind the rotation: it reads a file to
        # its end, then the oldest file still there. When it catches up for a moment, the
        # file it goes on to is the very next one. So every gap-free run between the first
        # (the log as it was when `logs -f` began, then the file it was in, unless that went
        # first) and the last is a whole number of whole files (conmon's cap of 1m x 3 / 5
        # each), and the gaps are where files begin.
        cap = 3 * MiB // 5
        runs = _runs(seq)
        for run in runs[1:-1]:
            size = _k8s_bytes(run)
            files_in_run = max(1, round(size / cap))
            assert 0.97 * cap * files_in_run <= size <= cap * files_in_run, (run[0], run[-1], size, cap)

        # `logs` afterwards: the last lines, in order, across the rotated files
        with d.client() as c:
            # (its oldest file may begin with the end of a line whose start is gone, see above)
            everything, stray = numbers_across_gaps(list(c.stream("container.logs", id=cid)))
            tail = numbers(list(c.stream("container.logs", id=cid, tail=1000)))
        assert _first_break(everything) == "no break" and len(stray) <= 1, stray
        assert everything[-1] == seq[-1]
        assert tail == everything[-1000:], (tail[:3], everything[-1000:][:3])
        assert everything[0] > 0, "nothing was rotated away"
    finally:
        d.cleanup()


LINES_PER_MIB = MiB // 50


def _k8s_bytes(numbers_: list[int]) -> int:
    """What conmon wrote for these lines: "<RFC3339Nano time> stdout F <text>\\n"."""
    return sum(len("2026-01-01T00:00:00.000000000+00:00 stdout F ") + len(str(n)) + 1 for n in numbers_)


def _runs(seq: list[int]) -> list[list[int]]:
    runs = [[seq[0]]]
    for n in seq[1:]:
        if n == runs[-1][-1] + 1:
            runs[-1].append(n)
        else:
            runs.append([n])
    return runs


def _breaks(seq: list[int]) -> list[tuple[int, int]]:
    return [(a, b) for a, b in zip(seq, seq[1:], strict=False) if b != a + 1]


def _first_break(seq: list[int]) -> str:
    for a, b in zip(seq, seq[1:], strict=False):
        if b != a + 1:
            return f"after {a} came {b}"
    return "no break"


def test_follower_that_keeps_up_misses_nothing_across_rotations(busybox_archive: Path) -> None:
    d = start_engine(busybox_archive, "runc")
    try:
        # 60,000 lines at about 5,000 a second; a file every 3,000 lines or so
        writer = ("i=0; while [ $i -lt 60000 ]; do j=0; while [ $j -lt 500 ]; do echo $i; "
                  "i=$((i+1)); j=$((j+1)); done; usleep 100000; done")
        cid = d.call("container.create", image="busybox", cmd=["sh", "-c", writer],
                     log_opts={"max-size": "256k", "max-file": "3"})["Id"]
        d.call("container.start", id=cid)
        with d.client(timeout=None) as c:
            seq = numbers(list(c.stream("container.logs", id=cid, follow=True)))
        assert seq == list(range(60000)), _breaks(seq)[:5]
        log_path = Path(d.call("container.inspect", id=cid)["LogPath"])
        assert sum(log_files(log_path).values()) <= 3 * 256 * 1024
        with d.client() as c:
            assert numbers(list(c.stream("container.logs", id=cid, tail=5))) == list(range(59995, 60000))
    finally:
        d.cleanup()


def test_rotation_by_default_and_per_run_files(busybox_archive: Path) -> None:
    d = start_engine(busybox_archive, "runc")
    try:
        # the daemon's default: 10m x 3, with an explicit small cap per container
        cid = d.call("container.create", image="busybox",
                     cmd=["sh", "-c", "i=0; while [ $i -lt 3000 ]; do echo line$i; i=$((i+1)); done"],
                     log_opts={"max-size": "16k", "max-file": "2", "compress": "true"})["Id"]
        for _ in range(2):
            d.call("container.start", id=cid)
            d.call("container.wait", id=cid)
        log_path = Path(d.call("container.inspect", id=cid)["LogPath"])
        files = log_files(log_path)
        assert set(files) <= {"ctr.log", "ctr.log.1", "ctr.log.tmp", "next"}, files
        assert all(size <= 16 * 1024 for size in files.values()), files
        with d.client() as c:
            last = [i["data"] for i in c.stream("container.logs", id=cid, tail=3)]
        assert last == [b"line2997\n", b"line2998\n", b"line2999\n"]
        # --log-driver none keeps nothing
        cid = d.call("container.create", image="busybox", cmd=["echo", "hidden"], log_driver="none")["Id"]
        d.call("container.start", id=cid)
        d.call("container.wait", id=cid)
        with d.client() as c:
            assert list(c.stream("container.logs", id=cid)) == []
        assert not os.path.exists(d.call("container.inspect", id=cid)["LogPath"])
        for bad in ({"max-size": "huge"}, {"max-file": "0"}, {"colour": "red"}):
            with pytest.raises(InvalidArgument):
                d.call("container.create", image="busybox", cmd=["true"], log_opts=bad)
        with pytest.raises(InvalidArgument):
            d.call("container.create", image="busybox", cmd=["true"], log_driver="syslog")
    finally:
        d.cleanup()


def test_compressed_rotated_files_are_read_in_order_with_since(busybox_archive: Path) -> None:
    d = start_engine(busybox_archive, "runc")
    try:
        cid = d.call("container.create", image="busybox", cmd=["sh", "-c",
                     # paced: a file every 80 ms or so (the engine keeps each one)
                     "i=0; while [ $i -lt 4000 ]; do echo line$i; i=$((i+1)); "
                     "[ $((i % 100)) -eq 0 ] && usleep 20000; done; sleep 1.2; echo late"],
                     log_opts={"max-size": "32k", "max-file": "5", "compress": "true"})["Id"]
        d.call("container.start", id=cid)
        d.call("container.wait", id=cid)
        log_path = Path(d.call("container.inspect", id=cid)["LogPath"])
        deadline = time.monotonic() + 10
        # the exit's own rotation: the run's last file becomes .1, .1 becomes .2.gz
        while (log_path.exists() or list(log_path.parent.glob("*.partial"))
               or (log_path.parent / "ctr.log.2").exists()):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        names = set(log_files(log_path))
        assert {"ctr.log.2.gz", "ctr.log.3.gz", "ctr.log.4.gz"} <= names and "ctr.log.1" in names, names
        with d.client() as c:
            items = list(c.stream("container.logs", id=cid))
            texts = [i["data"] for i in items]
            assert texts[-1] == b"late\n"
            first = int(texts[0].removeprefix(b"line"))
            assert texts[:-1] == [b"line%d\n" % n for n in range(first, 4000)]
            since = items[-1]["time"] - 0.6
            assert [i["data"] for i in c.stream("container.logs", id=cid, since=since)] == [b"late\n"]
            until = items[-2]["time"]
            last = [i["data"] for i in c.stream("container.logs", id=cid, until=until, tail=2)]
            assert last == [b"line3998\n", b"line3999\n"]
    finally:
        d.cleanup()


def test_daemon_log_opts_apply_to_every_container(busybox_archive: Path) -> None:
    d: Daemon = start_engine(busybox_archive, "runc",
                             config={"log-opts": {"max-size": "8k", "max-file": "2"}})
    try:
        cid = d.call("container.create", image="busybox",
                     cmd=["sh", "-c", "i=0; while [ $i -lt 2000 ]; do echo l$i; i=$((i+1)); done"])["Id"]
        d.call("container.start", id=cid)
        d.call("container.wait", id=cid)
        files = log_files(Path(d.call("container.inspect", id=cid)["LogPath"]))
        assert sum(files.values()) <= 2 * 8 * 1024, files
    finally:
        d.cleanup()


def rotator_wakeups(d: Daemon) -> int:
    """How often the daemon's log-rotating thread has woken (its voluntary context switches:
    each return from a blocking poll is one)."""
    assert d.proc is not None
    for task in Path(f"/proc/{d.proc.pid}/task").iterdir():
        try:
            if (task / "comm").read_text().strip() == "log-rotator":
                status = (task / "status").read_text()
                return int(status.split("voluntary_ctxt_switches:")[1].split()[0])
        except FileNotFoundError:
            continue  # a thread that ended meanwhile
    raise AssertionError("no log-rotator thread in the daemon")


def assert_rotator_sleeps(d: Daemon, timeout: float = 20) -> None:
    """Until the rotator wakes at most once in 2 s: it stops sweeping once the news that
    the last watched log is gone reaches it, which may take a while on a loaded machine;
    one that keeps sweeping fails after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        before = rotator_wakeups(d)
        time.sleep(2)
        woke = rotator_wakeups(d) - before
        if woke <= 1:
            return
        assert time.monotonic() < deadline, f"the log rotator still woke {woke} times in 2 s"


def test_the_rotator_sleeps_while_no_log_is_watched(busybox_archive: Path) -> None:
    """No timer wakes it with nothing to watch; a container with a size limit starts the
    sweeps (and its rotation works), its exit stops them again."""
    d = start_engine(busybox_archive, "runc")
    try:
        assert_rotator_sleeps(d)  # it used to wake 4 times a second
        cid = d.call("container.create", image="busybox", cmd=["sh", "-c", WRITER],
                     log_opts={"max-size": "64k", "max-file": "2"})["Id"]
        d.call("container.start", id=cid)
        log_path = Path(d.call("container.inspect", id=cid)["LogPath"])
        deadline = time.monotonic() + 20
        while not log_path.with_name(log_path.name + ".1").exists():
            assert time.monotonic() < deadline, log_files(log_path)
            time.sleep(0.1)
        d.call("container.stop", id=cid, timeout=0)
        assert sum(log_files(log_path).values()) <= 2 * 64 * 1024 + 64 * 1024  # capped
        assert_rotator_sleeps(d)  # once the die event has reached the rotator
        d.call("container.remove", id=cid)
    finally:
        d.cleanup()
