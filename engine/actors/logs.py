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
from typing import Any

import attrs
import trio

POLL_INTERVAL = 0.05

FILE_DRIVERS = ("k8s-file", "json-file", "local", "file")  # one built-in file driver, docker's names
DRIVERS = (*FILE_DRIVERS, "none")
DEFAULT_MAX_SIZE = 10 * 1024 * 1024
DEFAULT_MAX_FILE = 3
LOG_OPTS = ("max-size", "max-file", "compress")


@attrs.frozen
class LogPolicy:
    """How a container's output is kept: the driver (``k8s-file``, the monitor's file, or
    ``none``), the size cap of one file (0: none) and how many files (the current one and
    the rotated ``ctr.log.1`` … ``ctr.log.N-1``) are kept; ``compress`` gzips rotated files
    from ``ctr.log.2`` on (``ctr.log.1`` stays plain for followers that fell behind)."""

    driver: str = "k8s-file"
    max_size: int = DEFAULT_MAX_SIZE
    max_file: int = DEFAULT_MAX_FILE
    compress: bool = False

    @classmethod
    def parse(cls, driver: str, opts: dict[str, str]) -> LogPolicy:
        from engine.errors import InvalidArgument
        from engine.humanize import parse_size

        driver = driver or "k8s-file"
        if driver not in DRIVERS:
            raise InvalidArgument(f"unknown log driver {driver!r}: use k8s-file (json-file, local) or none")
        unknown = sorted(set(opts) - set(LOG_OPTS))
        if unknown:
            raise InvalidArgument(f"unknown log option(s) {', '.join(unknown)}: use {', '.join(LOG_OPTS)}")
        if driver == "none":
            return cls("none", 0, 1, False)
        max_size, max_file, compress = DEFAULT_MAX_SIZE, DEFAULT_MAX_FILE, False
        if "max-size" in opts:
            text = str(opts["max-size"]).strip()
            try:
                max_size = 0 if text == "-1" else parse_size(text)
            except ValueError as e:
                raise InvalidArgument(f"invalid log option max-size: {e}") from None
            if 0 < max_size < 4096:
                raise InvalidArgument(f"invalid log option max-size {text!r}: at least 4k (or -1 for no cap)")
        if "max-file" in opts:
            try:
                max_file = int(str(opts["max-file"]))
            except ValueError:
                raise InvalidArgument(f"invalid log option max-file {opts['max-file']!r}: a whole number") from None
            if not 1 <= max_file <= 100:
                raise InvalidArgument(f"invalid log option max-file {max_file}: from 1 to 100")
        if "compress" in opts:
            value = str(opts["compress"]).lower()
            if value not in ("true", "false", "1", "0"):
                raise InvalidArgument(f"invalid log option compress {opts['compress']!r}: true or false")
            compress = value in ("true", "1")
        return cls("k8s-file", max_size, max_file, compress)

    @classmethod
    def resolve(cls, config: Any, default_driver: str, default_opts: dict[str, str]) -> LogPolicy:
        """A container's policy: its own driver and options over the daemon's defaults
        (the daemon's options apply only with the daemon's driver, as in docker)."""
        driver = config.log_driver or default_driver
        same = (driver in FILE_DRIVERS) == ((default_driver or "k8s-file") in FILE_DRIVERS)
        opts = {**(default_opts if same else {}), **config.log_opts}
        return cls.parse(driver, opts)

    def monitor_path(self, log_path: Path) -> Path:
        """Where the monitor writes: the log file, or nowhere for ``none``."""
        return Path(os.devnull) if self.driver == "none" else log_path

    @property
    def monitor_size_max(self) -> int:
        """conmon's --log-size-max (-1: no cap). At the cap conmon starts a new file, which
        the engine's rotation (engine.supervisor.logrotate) keeps as ``ctr.log.1``."""
        return self.max_size if self.max_size > 0 else -1


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
