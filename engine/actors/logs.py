"""Reading container logs written by conmon in the k8s-file format.

Each line: ``<RFC3339Nano time> <stdout|stderr> <F|P> <text>``; ``P`` marks a partial line
whose text continues on the next record. conmon caps the file at ``--log-size-max`` by
truncating it, so a follower that sees the file shrink starts again from the top.
"""

from __future__ import annotations

import os
from collections import deque
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


def read_records(path: Path, *, since: float | None = None, until: float | None = None,
                 tail: int | None = None) -> tuple[list[LogRecord], int]:
    """Blocking: the records in the file now, and the offset where reading stopped."""
    parser = RecordParser()
    keep: deque[LogRecord] | list[LogRecord] = deque(maxlen=tail) if tail is not None else []
    offset = 0
    try:
        with open(path, "rb") as f:
            for line in f:
                if not line.endswith(b"\n"):
                    break  # a line conmon is still writing: the follower picks it up
                offset += len(line)
                record = parser.feed_line(line)
                if record is None:
                    continue
                if since is not None and record.time < since:
                    continue
                if until is not None and record.time > until:
                    continue
                keep.append(record)
    except FileNotFoundError:
        pass
    if tail == 0:
        return [], offset
    return list(keep), offset


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
