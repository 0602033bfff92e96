"""Reading container logs written by conmon in the k8s-file format.

Each line: ``<RFC3339Nano time> <stdout|stderr> <F|P> <text>``; ``P`` marks a partial line
whose text continues on the next record. The log is a chain of files (rotation: see
``log_chain`` below and engine.supervisor.logrotate); readers go through them in order.
"""

from __future__ import annotations

import os
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
        if getattr(config, "log_path", ""):
            # the CRI names the file and kubelet rotates it (ReopenContainerLog): no cap here
            return cls("k8s-file", 0, 1, False)
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
        the engine's rotation (engine.supervisor.logrotate) keeps as ``ctr.log.1``.

        The engine learns of a new file only after conmon made it, and deletes the oldest
        then. Until it does, conmon may switch once more (into the file the engine staged;
        a third switch drops an unheld file, so never more): ``max_file + 2`` files at
        most. Each is capped so that even then they fit in ``max_file × max_size``
        (docker's bound for the whole log), however late the engine is."""
        if self.max_size <= 0:
            return -1
        return max(4096, self.max_file * self.max_size // (self.max_file + 2))


@attrs.frozen
class LogRecord:
    time: float
    stream: str  # stdout | stderr
    text: bytes  # one whole line, with its trailing newline (but a run's last, unended one)

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
        self._stamps: dict[str, bytes] = {}  # the time of each stream's latest part

    @property
    def pending(self) -> bool:
        """Whether a line's first parts were read and its last is still to come."""
        return any(self._partial.values())

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
            self._stamps[stream] = stamp
            return None
        try:
            ts = parse_time(stamp)
        except ValueError:
            ts = 0.0
        whole = bytes(buf) + b"\n"
        buf.clear()
        return LogRecord(ts, stream, whole)

    def flush(self) -> list[LogRecord]:
        """The lines begun and never ended, without a newline: what a container wrote last
        before it exited without ending its line (docker's logs keep it so). Oldest first."""
        records = []
        for stream, buf in self._partial.items():
            if buf:
                try:
                    ts = parse_time(self._stamps.get(stream, b""))
                except ValueError:
                    ts = 0.0
                records.append(LogRecord(ts, stream, bytes(buf)))
                buf.clear()
        return sorted(records, key=lambda r: r.time)


# --- the files of one log, in order ----------------------------------------------------------
#
# conmon writes ``ctr.log``; at its size cap it opens ``ctr.log.tmp`` (truncating it) and
# renames it over ``ctr.log``. The engine (engine.supervisor.logrotate) keeps a hard link to
# every file conmon writes (``.log-links/current``), stages the next one (``.log-links/next``,
# linked as ``ctr.log.tmp``) before conmon needs it, and shifts finished files into
# ``ctr.log.1`` … ``ctr.log.N-1`` (``.gz`` from 2 on with compress). Readers go by inode:
# a file is finished once ``ctr.log`` names another one.

LINKS_DIR = ".log-links"
# in LINKS_DIR: the inodes (one a line) of files whose first record ends a line begun in
# the file before (conmon switched files between a line's ``P`` parts and its ``F``); a
# reader that starts at such a file without the one before drops that first record
CONTINUED = "continued"


def continued_inodes(path: Path) -> set[int]:
    """Blocking: the files of ``path``'s log that begin mid-line (see ``CONTINUED``)."""
    try:
        text = (path.parent / LINKS_DIR / CONTINUED).read_text()
    except (FileNotFoundError, NotADirectoryError):
        return set()
    return {int(word) for word in text.split() if word.isdigit()}


def ends_mid_line(path: Path) -> bool:
    """Blocking: whether the file's last record is a ``P`` (its line goes on elsewhere)."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            f.seek(max(0, size - 65536))
            tail = f.read()
    except FileNotFoundError:
        return False
    lines = [line for line in tail.split(b"\n") if line]
    if not lines:
        return False
    parts = lines[-1].split(b" ", 3)
    return len(parts) >= 3 and parts[2].startswith(b"P")


@attrs.frozen
class LogPosition:
    """Where a reader stopped: the file (by inode; 0: none yet) and the offset in it."""

    ino: int
    offset: int


def _rotated_index(name: str, base: str) -> tuple[int, bool] | None:
    rest = name[len(base) + 1:] if name.startswith(base + ".") else ""
    gz = rest.endswith(".gz")
    digits = rest[:-3] if gz else rest
    return (int(digits), gz) if digits.isdigit() else None


RENAME_RETRIES = 5  # listings of the log's files before one is taken for rotated away


def log_chain(path: Path, *, compressed: bool = True) -> list[tuple[Path, os.stat_result]]:
    """Blocking: the log's files oldest first, each file once (by inode); empty staged files
    left out. A listing taken while a file is renamed (``current`` -> ``ctr.log.1`` at a
    rotation or exit) could miss it under both names: such a listing is taken again."""
    chain: list[tuple[Path, os.stat_result]] = []
    for _attempt in range(RENAME_RETRIES):
        before = _names(path)
        if before is None:
            return []
        chain = _log_chain_once(path, before[0], compressed=compressed)
        if _names(path) == before:
            break
    return chain


def _names(path: Path) -> tuple[list[str], list[str]] | None:
    """The names in the log's directory and in its links directory, or None without it."""
    try:
        names = sorted(os.listdir(path.parent))
    except FileNotFoundError:
        return None
    try:
        links = sorted(os.listdir(path.parent / LINKS_DIR))
    except (FileNotFoundError, NotADirectoryError):
        links = []
    return names, links


def _log_chain_once(path: Path, names: list[str], *, compressed: bool) -> list[tuple[Path, os.stat_result]]:
    found: list[tuple[int, bool, Path]] = []
    for name in names:
        index = _rotated_index(name, path.name)
        if index is not None and (compressed or not index[1]):
            found.append((index[0], index[1], path.parent / name))
    candidates = [p for _, _, p in sorted(found, key=lambda f: (-f[0], f[1]))]
    links = path.parent / LINKS_DIR
    candidates += [links / "current", links / "next", path]
    chain: list[tuple[Path, os.stat_result]] = []
    seen: set[int] = set()
    current_ino = _ino(path)
    for candidate in candidates:
        try:
            st = os.stat(candidate)
        except FileNotFoundError:
            continue
        if st.st_ino in seen:
            continue
        if candidate.name == "next" and st.st_size == 0 and st.st_ino != current_ino:
            continue  # staged for later, not written yet
        seen.add(st.st_ino)
        chain.append((candidate, st))
    # the current file last, wherever a link put it
    chain.sort(key=lambda item: item[1].st_ino == current_ino)
    return chain


def _ino(path: Path) -> int:
    try:
        return os.stat(path).st_ino
    except FileNotFoundError:
        return 0


def open_chain(path: Path, *, compressed: bool = True) -> list[tuple[Any, int]]:
    """Blocking: the log's files opened, oldest first, with their inodes. Files move while
    the log rotates: each is checked to be the one listed, else the listing starts over."""
    import gzip

    for _attempt in range(20):
        opened: list[tuple[Any, int]] = []
        consistent = True
        for file_path, st in log_chain(path, compressed=compressed):
            try:
                f = open(file_path, "rb")  # noqa: SIM115 - handed to the caller
            except FileNotFoundError:
                consistent = False
                break
            if os.fstat(f.fileno()).st_ino != st.st_ino:
                f.close()
                consistent = False
                break
            opened.append((gzip.GzipFile(fileobj=f) if file_path.name.endswith(".gz") else f, st.st_ino))
        if consistent:
            return opened
        for f, _ in opened:
            f.close()
    return []


# How much of a log one worker-thread read takes: what a `logs` call holds in memory while
# its client reads (it used to hold the whole log, ~29 MB a reader).
BATCH_BYTES = 256 * 1024


@attrs.define
class LogScan:
    """A pass over every file of the log as it is when the scan begins, oldest first, in
    batches: memory is one batch whatever the log's size. The files are held open, so a
    rotation during the scan changes nothing of what it reads. ``skip`` matching records
    are passed over first (how ``tail`` is served); ``position`` is where a follower goes
    on once the scan is done."""

    files: list[tuple[Any, int]]  # (open file, inode), oldest first
    since: float | None = None
    until: float | None = None
    skip: int = 0
    orphan: bool = False  # the oldest file begins with the end of a line rotated away
    finished: bool = False  # the container has exited: a line it left unended is its last record
    index: int = 0
    offset: int = 0  # in files[index]
    parser: RecordParser = attrs.field(factory=RecordParser)
    position: LogPosition = LogPosition(0, 0)

    def matches(self, record: LogRecord) -> bool:
        return not ((self.since is not None and record.time < self.since)
                    or (self.until is not None and record.time > self.until))

    def next_batch(self) -> list[LogRecord] | None:
        """Blocking: the next records (perhaps none), or None at the end."""
        while self.index < len(self.files):
            f, ino = self.files[self.index]
            records: list[LogRecord] = []
            size = 0
            try:
                while size < BATCH_BYTES:
                    line = f.readline()
                    if not line.endswith(b"\n"):
                        size = -1  # the end, or a line conmon is still writing: the follower's
                        break
                    size += len(line)
                    self.offset += len(line)
                    record = self.parser.feed_line(line)
                    if not self.parser.pending:
                        # the follower goes on from here: never from inside a line's parts
                        self.position = LogPosition(ino, self.offset)
                    if record is None:
                        continue
                    if self.orphan:
                        self.orphan = False
                        continue
                    if not self.matches(record):
                        continue
                    if self.skip > 0:
                        self.skip -= 1
                        continue
                    records.append(record)
            except (OSError, EOFError):
                size = -1  # a damaged archive: go on with the next file
            if size >= 0:
                return records  # more of this file to come
            if self.offset == 0 and not self.parser.pending:
                self.position = LogPosition(ino, 0)
            self.index += 1
            self.offset = 0
            if records:
                return records
        if self.finished and self.parser.pending:
            return self._take([r for r in self.parser.flush() if self.matches(r)])
        return None

    def _take(self, records: list[LogRecord]) -> list[LogRecord]:
        skipped = min(self.skip, len(records))
        self.skip -= skipped
        return records[skipped:]

    def rewind(self) -> None:
        for f, _ in self.files:
            f.seek(0)
        self.index = self.offset = 0
        self.parser = RecordParser()
        self.position = LogPosition(0, 0)

    def close(self) -> None:
        for f, _ in self.files:
            f.close()
        self.files = []


def start_scan(path: Path, *, since: float | None = None, until: float | None = None,
               tail: int | None = None, finished: bool = False) -> LogScan:
    """Blocking: a scan of the log as it is now. For ``tail``, a first pass counts the
    matching records (in batches, keeping none) so the scan skips all but the last ones."""
    chain = open_chain(path)
    orphan = bool(chain) and chain[0][1] in continued_inodes(path)
    scan = LogScan(chain, since, until, orphan=orphan, finished=finished)
    if tail is not None:
        total = 0
        while (batch := scan.next_batch()) is not None:
            total += len(batch)
        scan.rewind()
        scan.orphan = orphan
        scan.skip = max(0, total - tail)
    return scan


def read_log(path: Path, *, since: float | None = None, until: float | None = None,
             tail: int | None = None) -> tuple[list[LogRecord], LogPosition]:
    """Blocking: the records in every file of the log now, oldest first, and where reading
    stopped (for ``follow``). All in memory: for small logs and tests; the daemon streams
    with ``start_scan`` + ``scan_records``."""
    scan = start_scan(path, since=since, until=until, tail=tail)
    records: list[LogRecord] = []
    try:
        while (batch := scan.next_batch()) is not None:
            records.extend(batch)
    finally:
        scan.close()
    if tail == 0:
        return [], scan.position
    return records, scan.position


def read_records(path: Path, *, since: float | None = None, until: float | None = None,
                 tail: int | None = None) -> tuple[list[LogRecord], int]:
    """``read_log`` with the offset in the last file only."""
    records, position = read_log(path, since=since, until=until, tail=tail)
    return records, position.offset


async def scan_records(scan: LogScan) -> AsyncIterator[LogRecord]:
    """The scan's records, read a batch at a time in a worker thread as the consumer takes
    them (a client that does not read holds one batch, not the log). Closes the scan."""
    try:
        while (batch := await trio.to_thread.run_sync(scan.next_batch)) is not None:
            for record in batch:
                yield record
    finally:
        scan.close()


class _Cursor:
    """A follower's open file: read to its end, and once the writer moved on (``ctr.log``
    names another file), on to the next file of the chain. Blocking methods."""

    def __init__(self, path: Path, start: LogPosition | int) -> None:
        self.path = path
        self.fd: int | None = None
        self.ino = 0
        self.offset = 0
        self.jumped = False  # it skipped files (fell behind the rotation): a fresh start
        if isinstance(start, LogPosition):
            self._open_at(start)
        else:
            self._open_current(start)

    def _open_current(self, offset: int) -> None:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return
        self._use(fd, offset)

    def _open_at(self, position: LogPosition) -> None:
        if position.ino == 0:
            self._open_current(0)
            return
        # A file is renamed as the log rotates (``current`` -> ``ctr.log.1``): a listing
        # taken during the rename may miss it, or its old name may be gone by the open.
        # Look again before taking it for rotated away (reading it anew would repeat it).
        for _attempt in range(RENAME_RETRIES):
            names = [file_path for file_path, st in log_chain(self.path, compressed=False)
                     if st.st_ino == position.ino]
            if not names:
                continue
            try:
                fd = os.open(names[0], os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            if os.fstat(fd).st_ino == position.ino:
                self._use(fd, position.offset)
                return
            os.close(fd)
        # rotated away since it was read: go on from the oldest file there is
        self.jumped = True
        self._advance()

    def _use(self, fd: int, offset: int) -> None:
        if self.fd is not None:
            os.close(self.fd)
        self.fd = fd
        self.ino = os.fstat(fd).st_ino
        self.offset = offset

    def _advance(self) -> bool:
        """Move to the file after this one; False when there is none yet."""
        for _attempt in range(RENAME_RETRIES):  # see _open_at: a rename may hide ours
            chain = log_chain(self.path, compressed=False)
            inos = [st.st_ino for _, st in chain]
            if self.ino in inos:
                break
        if self.ino in inos:
            following = chain[inos.index(self.ino) + 1:]
        else:
            # Fell behind the rotation: ours was deleted, and every file read before it
            # earlier still (oldest go first), so the oldest file there is comes next: a
            # gap, never a repeat. (Our open fd keeps our inode number from being reused.)
            following = chain
            self.jumped = True
        for file_path, st in following:
            try:
                fd = os.open(file_path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            if os.fstat(fd).st_ino != st.st_ino:
                os.close(fd)
                continue
            self._use(fd, 0)
            return True
        return False

    def read(self) -> tuple[bytes, bool]:
        """New bytes, and whether to read again at once (it moved to another file)."""
        if self.fd is None:
            if self.ino:
                return b"", self._advance()
            self._open_current(0)
            if self.fd is None:
                return b"", False
        data = os.pread(self.fd, 1 << 20, self.offset)
        if data:
            self.offset += len(data)
            return data, True
        current = _ino(self.path)
        if current == self.ino:
            return b"", False
        # ctr.log names another file (or none): ours is finished once conmon let go of
        # it, which it did before the rename; read what came last, then move on
        data = os.pread(self.fd, 1 << 20, self.offset)
        if data:
            self.offset += len(data)
            return data, True
        return b"", self._advance()  # none when ctr.log was rotated away after the run

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


async def follow(path: Path, start: LogPosition | int, *, finished: Callable[[], bool],
                 changes: Callable[[], trio.Event] | None = None) -> AsyncIterator[LogRecord]:
    """Yield records written after ``start`` (a position from ``read_log``, or an offset in
    the current file) until ``finished()`` is true and the log has been read to its end.
    Rotations are followed file by file (nothing lost, nothing repeated) as long as the
    follower is not a whole rotation chain behind. New output is polled for; ``changes()``
    gives an event set when the container's state changes, so an exit ends the stream at
    once, not a poll later."""
    cursor = await trio.to_thread.run_sync(_Cursor, path, start)
    parser = RecordParser()
    pending = b""
    drop_first = False
    try:
        while True:
            changed = changes() if changes is not None else None
            done = finished()  # read it before draining, so nothing written before exit is lost
            chunk, again = await trio.to_thread.run_sync(cursor.read)
            if cursor.jumped:
                # what was read of a line before the gap has no end; and the first record
                # of the new file may be the end of a line rotated away
                cursor.jumped = False
                parser, pending = RecordParser(), b""
                drop_first = cursor.ino in await trio.to_thread.run_sync(continued_inodes, path)
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                record = parser.feed_line(line + b"\n")
                if record is not None:
                    if drop_first:
                        drop_first = False
                        continue
                    yield record
            if again:
                continue
            if done:
                for record in parser.flush():  # the run's last line, left unended
                    yield record
                return
            if changed is None:
                await trio.sleep(POLL_INTERVAL)
            else:
                with trio.move_on_after(POLL_INTERVAL):
                    await changed.wait()
    finally:
        cursor.close()
