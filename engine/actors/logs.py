"""Reading container logs written by conmon in the k8s-file format.

Each line: ``<RFC3339Nano time> <stdout|stderr> <F|P> <text>``; ``P`` marks a partial line
whose text continues on the next record. conmon caps the file at ``--log-size-max`` by
truncating it, so a follower that sees the file shrink starts again from the top.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from pathlib import Path

import attrs
import trio

POLL_INTERVAL = 0.05


@attrs.frozen
class LogRecord:
    time: float
    stream: str  # stdout | stderr
    text: bytes  # one whole line, with its trailing newline

    def to_wire(self, timestamps: bool) -> dict[str, object]:
        return {"stream": self.stream, "data": self.text, "time": self.time}


def parse_time(stamp: bytes) -> float:
    text = stamp.decode()
    # datetime can't take nanoseconds: cut the fraction to microseconds.
    if "." in text:
        head, _, rest = text.partition(".")
        digits = "".join(ch for ch in rest if ch.isdigit())
        zone = rest[len(digits):]
        text = f"{head}.{digits[:6]}{zone}"
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


class RecordParser:
    """Turns k8s-file lines into whole-line records (joining ``P`` partials)."""

    def __init__(self) -> None:
        self._partial: dict[str, bytearray] = {}

    def feed_line(self, line: bytes) -> LogRecord | None:
        parts = line.rstrip(b"\n").split(b" ", 3)
        if len(parts) < 3:
            return None
        stamp, stream_b, tag = parts[0], parts[1], parts[2]
        text = parts[3] if len(parts) == 4 else b""
        stream = stream_b.decode(errors="replace")
        buf = self._partial.setdefault(stream, bytearray())
        buf += text
        if tag.startswith(b"P"):
            return None
        try:
            ts = parse_time(stamp)
        except ValueError:
            ts = 0.0
        whole = bytes(buf) + b"\n"
        buf.clear()
        return LogRecord(ts, stream, whole)


# How much of a log file one worker-thread read takes: what a `logs` call holds in memory
# while its client reads (it used to hold the whole file, ~29 MB a reader).
BATCH_BYTES = 256 * 1024


@attrs.define
class LogScan:
    """A pass over a log file's complete lines from ``offset`` up to ``end`` (the size when
    the pass began), in batches: memory is one batch whatever the file's size.
    ``skip`` matching records are passed over first (how ``tail`` is served)."""

    path: Path
    since: float | None = None
    until: float | None = None
    skip: int = 0
    offset: int = 0
    end: int = 0
    parser: RecordParser = attrs.field(factory=RecordParser)

    def matches(self, record: LogRecord) -> bool:
        return not ((self.since is not None and record.time < self.since)
                    or (self.until is not None and record.time > self.until))

    def next_batch(self) -> list[LogRecord] | None:
        """Blocking: the next records, or None at ``end``."""
        lines = _read_lines(self.path, self.offset, self.end, BATCH_BYTES)
        if not lines:
            return None
        records = []
        for line in lines.splitlines(keepends=True):
            record = self.parser.feed_line(line)
            if record is None or not self.matches(record):
                continue
            if self.skip > 0:
                self.skip -= 1
                continue
            records.append(record)
        self.offset += len(lines)
        return records


def _read_lines(path: Path, offset: int, end: int, size: int) -> bytes:
    """Whole lines of ``path`` from ``offset``, about ``size`` bytes of them (more when a
    single line is longer), never past ``end``; b"" when none is complete."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return b""
    try:
        while True:
            want = min(size, end - offset)
            if want <= 0:
                return b""
            chunk = os.pread(fd, want, offset)
            cut = chunk.rfind(b"\n")
            if cut >= 0:
                return chunk[: cut + 1]
            if len(chunk) < want or want < size:
                return b""  # the file ends inside a line: conmon is still writing it
            size *= 2
    finally:
        os.close(fd)


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def start_scan(path: Path, *, since: float | None = None, until: float | None = None,
               tail: int | None = None) -> LogScan:
    """Blocking: a scan of the file as it is now. For ``tail``, a first pass counts the
    matching records (in batches, keeping none) so the scan skips all but the last ones."""
    end = _file_size(path)
    skip = 0
    if tail is not None:
        counter = LogScan(path, since, until, end=end)
        total = 0
        while (batch := counter.next_batch()) is not None:
            total += len(batch)
        end = counter.offset  # the second pass reads exactly what was counted
        skip = max(0, total - tail)
    return LogScan(path, since, until, skip=skip, end=end)


def read_records(path: Path, *, since: float | None = None, until: float | None = None,
                 tail: int | None = None) -> tuple[list[LogRecord], int]:
    """Blocking: the records in the file now, and the offset where reading stopped (all in
    memory: for small files and tests; the daemon streams with ``scan_records``)."""
    scan = start_scan(path, since=since, until=until, tail=tail)
    records: list[LogRecord] = []
    while (batch := scan.next_batch()) is not None:
        records.extend(batch)
    return records, scan.offset


async def scan_records(scan: LogScan) -> AsyncIterator[LogRecord]:
    """The scan's records, read a batch at a time in a worker thread as the consumer takes
    them (a client that does not read holds one batch, not the file)."""
    while (batch := await trio.to_thread.run_sync(scan.next_batch)) is not None:
        for record in batch:
            yield record


async def follow(path: Path, offset: int, *, finished: Callable[[], bool],
                 changes: Callable[[], trio.Event] | None = None) -> AsyncIterator[LogRecord]:
    """Yield records appended after ``offset`` until ``finished()`` is true and the file has
    been read to its end. New output is polled for; ``changes()`` gives an event set when
    the container's state changes, so an exit ends the stream at once, not a poll later."""
    parser = RecordParser()
    pending = b""
    inode: int | None = None
    while True:
        changed = changes() if changes is not None else None
        done = finished()  # read it before draining, so nothing written before exit is lost
        chunk, size, ino = await trio.to_thread.run_sync(_read_from, path, offset)
        if inode is None:
            inode = ino
        if size < offset or (ino and ino != inode):  # rotated by the size cap
            offset, pending, inode = 0, b"", ino
            continue
        offset += len(chunk)
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            record = parser.feed_line(line + b"\n")
            if record is not None:
                yield record
        if not chunk:
            if done:
                return
            if changed is None:
                await trio.sleep(POLL_INTERVAL)
            else:
                with trio.move_on_after(POLL_INTERVAL):
                    await changed.wait()


def _read_from(path: Path, offset: int) -> tuple[bytes, int, int]:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return b"", offset, 0
    try:
        st = os.fstat(fd)
        if st.st_size < offset:
            return b"", st.st_size, st.st_ino
        return os.pread(fd, 1 << 20, offset), st.st_size, st.st_ino
    finally:
        os.close(fd)
