"""Log rotation: conmon caps each log file, the engine keeps the finished ones.

conmon (``--log-size-max``) starts a new file before a write would take the current one
past the cap: it opens ``ctr.log.tmp`` (O_TRUNC) and renames it over ``ctr.log``, dropping
the old file. So that no byte is lost, the engine holds a hard link to the file conmon
writes (``.log-links/current``) and stages the next one before conmon needs it: an empty
``.log-links/next``, linked as ``ctr.log.tmp``. When conmon switches (inotify tells at
once; a sweep every second catches anything missed), the finished file is shifted into
``ctr.log.1`` (``.1`` → ``.2`` …, the oldest beyond ``max-file`` deleted, ``.2`` on gzipped
with ``compress``) and the next file is staged. The files on disk stay within ``max-file ×
max-size`` plus one write; readers (engine.actors.logs) follow the files by inode.

Only a writer that fills two whole files before the engine reacts loses one of them.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import functools
import gzip
import logging
import math
import os
import select
import shutil
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from engine.actors.events import Event
from engine.actors.logs import (
    CONTINUED,
    LINKS_DIR,
    LogPolicy,
    _rotated_index,
    continued_inodes,
    ends_mid_line,
    log_chain,
)
from engine.store.atomic import write_bytes_atomic

if TYPE_CHECKING:
    from engine.supervisor.app import App

log = logging.getLogger("engine.logs")

SWEEP_INTERVAL = 1.0
THREAD_NAME = "log-rotator"  # the rotating thread's name in /proc (tests find it by it)
PR_SET_NAME = 15
IN_CREATE = 0x100
IN_MOVED_TO = 0x80
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC
_EVENT = struct.Struct("iIII")


# --- one rotation step (blocking) ---------------------------------------------------------------


def _stat(path: Path) -> os.stat_result | None:
    try:
        return os.stat(path)
    except FileNotFoundError:
        return None


def _shift_in(log_path: Path, finished: Path, max_file: int, compress: bool) -> None:
    """``finished`` becomes ``ctr.log.1``; the others move up one; beyond ``max_file - 1``
    rotated files the oldest go."""
    directory, base = log_path.parent, log_path.name
    rotated: list[tuple[int, bool, str]] = []
    for name in os.listdir(directory):
        index = _rotated_index(name, base)
        if index is not None:
            rotated.append((index[0], index[1], name))
    for number, gz, name in sorted(rotated, reverse=True):
        if number + 1 >= max_file:
            (directory / name).unlink(missing_ok=True)
        else:
            os.rename(directory / name, directory / f"{base}.{number + 1}{'.gz' if gz else ''}")
    if max_file <= 1:
        finished.unlink(missing_ok=True)
        return
    os.rename(finished, directory / f"{base}.1")
    if compress:
        for number, gz, _name in sorted(rotated):
            if not gz and 2 <= number + 1 < max_file:
                _gzip(directory / f"{base}.{number + 1}")


def _gzip(path: Path) -> None:
    target = path.with_name(path.name + ".gz")
    partial = path.with_name(path.name + ".gz.partial")
    try:
        with open(path, "rb") as src, gzip.open(partial, "wb", compresslevel=6) as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        os.rename(partial, target)
        path.unlink()
    except FileNotFoundError:
        partial.unlink(missing_ok=True)


def _mark_continued(log_path: Path, ino: int) -> None:
    """Note that file ``ino`` begins mid-line; notes of files gone are dropped."""
    present = {st.st_ino for _, st in log_chain(log_path)}
    marks = (continued_inodes(log_path) & present) | {ino}
    write_bytes_atomic(log_path.parent / LINKS_DIR / CONTINUED,
                       "".join(f"{i}\n" for i in sorted(marks)).encode(), mode=0o600, durable=False)


def _link_over(source: Path, target: Path) -> None:
    temp = target.with_name(target.name + ".new")
    temp.unlink(missing_ok=True)
    os.link(source, temp)
    os.rename(temp, target)


def _stage(log_path: Path, links: Path) -> None:
    """An empty ``next`` file, linked as ``ctr.log.tmp`` for conmon's next switch.

    A ``next`` with a second name was staged already: it is still ``ctr.log.tmp``, or conmon
    took it (renamed it to ``ctr.log``) since ``rotate_step`` looked, and ``rotate_step``
    moves it on. Linking such a file as ``ctr.log.tmp`` again would have conmon truncate the
    file it writes at its next switch. And a ``ctr.log.tmp`` that is there already is never
    replaced: conmon may have just made it and be about to rename it."""
    nxt, tmp = links / "next", log_path.with_name(log_path.name + ".tmp")
    st_next = _stat(nxt)
    if st_next is None:
        fd = os.open(nxt, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o640)
        os.close(fd)
        st_next = os.stat(nxt)
    if st_next.st_nlink > 1:
        return
    try:
        os.link(nxt, tmp)
    except FileExistsError:
        pass


def rotate_step(log_path: Path, policy: LogPolicy) -> int:
    """Bring the files in line with what conmon did; how many files were shifted in."""
    links = log_path.parent / LINKS_DIR
    links.mkdir(mode=0o700, exist_ok=True)
    current, nxt = links / "current", links / "next"
    shifted = 0
    for _attempt in range(5):
        st_log = _stat(log_path)
        if st_log is None:
            break
        st_cur = _stat(current)
        if st_cur is not None and st_cur.st_ino == st_log.st_ino:
            break  # steady: the file conmon writes is held
        st_next = _stat(nxt)
        # conmon moved on: what it finished goes into the chain, oldest first
        finished: list[tuple[Path, int]] = []
        if st_cur is not None:
            finished.append((current, st_cur.st_ino))
        if st_next is not None and st_next.st_ino != st_log.st_ino and st_next.st_size > 0:
            finished.append((nxt, st_next.st_ino))
        following = [ino for _, ino in finished[1:]] + [st_log.st_ino]
        for (done, _ino), after in zip(finished, following, strict=False):
            if ends_mid_line(done):
                _mark_continued(log_path, after)
        for done, _ino in finished:
            _shift_in(log_path, done, policy.max_file, policy.compress)
            shifted += 1
        if st_next is not None and st_next.st_ino == st_log.st_ino:
            os.rename(nxt, current)  # the staged file is the current one now
            continue
        try:
            _link_over(log_path, current)
        except FileNotFoundError:
            continue
    _stage(log_path, links)
    return shifted


def rotate_finished_run(log_path: Path, policy: LogPolicy) -> None:
    """After a run: hand its files to the chain and start the next run in a new file
    (conmon counts a file's size from its own start, not from what a file already holds)."""
    rotate_step(log_path, policy)
    links = log_path.parent / LINKS_DIR
    st_log = _stat(log_path)
    if st_log is not None and st_log.st_size > 0:
        _shift_in(log_path, log_path, policy.max_file, policy.compress)
        (links / "current").unlink(missing_ok=True)


# --- inotify -------------------------------------------------------------------------------------


class _Inotify:
    def __init__(self) -> None:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        self._add = libc.inotify_add_watch
        self._add.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        self._rm = libc.inotify_rm_watch
        self._rm.argtypes = [ctypes.c_int, ctypes.c_int]
        fd = libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        self.fd = fd

    def add(self, path: Path) -> int:
        wd = self._add(self.fd, os.fsencode(path), IN_CREATE | IN_MOVED_TO)
        if wd < 0:
            raise OSError(ctypes.get_errno(), f"inotify_add_watch {path}")
        return int(wd)

    def remove(self, wd: int) -> None:
        self._rm(self.fd, wd)

    def read(self) -> list[tuple[int, str]]:
        try:
            data = os.read(self.fd, 64 * 1024)
        except BlockingIOError:
            return []
        events, pos = [], 0
        while pos + _EVENT.size <= len(data):
            wd, _mask, _cookie, length = _EVENT.unpack_from(data, pos)
            name = data[pos + _EVENT.size: pos + _EVENT.size + length].rstrip(b"\0").decode(errors="replace")
            events.append((wd, name))
            pos += _EVENT.size + length
        return events

    def close(self) -> None:
        os.close(self.fd)


# --- the service -------------------------------------------------------------------------------


class LogRotator:
    """Watches the logs of running containers (told by the container events).

    The rotation steps run in a thread of their own, woken by inotify: a daemon loop busy
    streaming a chatty container's output must not delay them, or conmon would fill the
    next file before the last one was kept. The trio side only adds and removes watches
    (under a lock held for microseconds) and rotates a finished run's files."""

    def __init__(self, app: App) -> None:
        self.app = app
        self._lock = threading.Lock()  # guards the tables below
        self._watched: dict[str, tuple[Path, LogPolicy, int]] = {}  # id -> (log, policy, wd)
        self._by_wd: dict[int, str] = {}
        self._step_locks: dict[str, threading.Lock] = {}
        self._inotify: _Inotify | None = None
        self._stop = threading.Event()
        # wakes the rotating thread, which otherwise sleeps until inotify or a sweep is due
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def policy_of(self, config: object) -> LogPolicy:
        settings = self.app.config
        return LogPolicy.resolve(config, settings.log_driver, settings.log_opts)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            self._inotify = _Inotify()
        except OSError as e:
            log.warning("inotify is unavailable (%s): logs are rotated by the sweep alone", e)
        # unbounded: container starts and exits only, and none may be missed
        send, receive = trio.open_memory_channel[Event](math.inf)

        def observe(event: Event) -> None:
            if event.type == "container" and event.action in ("start", "die", "destroy"):
                send.send_nowait(event)

        self.app.events.observe(observe)
        try:
            async with trio.open_nursery() as nursery:
                # the rotating loop is a worker thread owned by a task of this nursery: it
                # ends once _stop is set and it is woken, and the nursery waits for it
                nursery.start_soon(functools.partial(trio.to_thread.run_sync, self._loop))
                task_status.started()
                try:
                    async for event in receive:
                        try:
                            await self._on_event(event)
                        except Exception:  # a bug here must not take the daemon down
                            log.exception("log rotation: handling %s %s failed", event.action, event.id)
                finally:
                    self._stop.set()
                    self._wake()
        finally:
            if self._inotify is not None:
                self._inotify.close()
            wake_r, wake_w, self._wake_r, self._wake_w = self._wake_r, self._wake_w, -1, -1
            os.close(wake_r)
            os.close(wake_w)

    async def watch_running(self) -> None:
        """After adoption: the containers that were running all along (no start event)."""
        supervisor = self.app.services.containers
        for actor in supervisor.all() if supervisor is not None else []:
            if actor.status.state.value in ("running", "paused"):
                await self._watch(actor.id)

    async def _on_event(self, event: Event) -> None:
        if event.action == "start":
            await self._watch(event.id)
        elif event.action == "die":
            entry = self._unwatch(event.id)
            found = (entry[0], entry[1]) if entry is not None else self._log_of(event.id)
            if found is not None:  # (an exit adoption found is not watched yet)
                await trio.to_thread.run_sync(self._step, event.id, rotate_finished_run, *found)
        else:
            self._unwatch(event.id)
            with self._lock:
                self._step_locks.pop(event.id, None)

    def _log_of(self, container_id: str) -> tuple[Path, LogPolicy] | None:
        """A container's log and policy, when it has a rotated log."""
        supervisor = self.app.services.containers
        if supervisor is None:
            return None
        try:
            actor = supervisor.get(container_id)
        except Exception:  # removed meanwhile
            return None
        policy = self.policy_of(actor.config)
        if policy.driver == "none" or policy.max_size <= 0:
            return None
        return actor.files.log_path, policy

    async def _watch(self, container_id: str) -> None:
        found = None if container_id in self._watched else self._log_of(container_id)
        if found is None:
            return
        log_path, policy = found
        await trio.to_thread.run_sync(self._step, container_id, rotate_step, log_path, policy)
        with self._lock:
            wd = -1
            if self._inotify is not None:
                try:
                    wd = self._inotify.add(log_path.parent)
                    self._by_wd[wd] = container_id
                except OSError as e:
                    log.warning("container %s: no inotify watch on its log (%s)", container_id, e)
            self._watched[container_id] = (log_path, policy, wd)
        self._wake()  # the thread sleeps while nothing is watched: the sweeps begin now

    def _unwatch(self, container_id: str) -> tuple[Path, LogPolicy, int] | None:
        with self._lock:
            entry = self._watched.pop(container_id, None)
            if entry is not None and entry[2] >= 0 and self._inotify is not None:
                self._by_wd.pop(entry[2], None)
                self._inotify.remove(entry[2])  # EINVAL for a directory gone already: harmless
        return entry

    def _step(self, container_id: str, step: Callable[[Path, LogPolicy], object],
              log_path: Path, policy: LogPolicy) -> None:
        """One rotation step for one container at a time (blocking)."""
        with self._lock:
            lock = self._step_locks.setdefault(container_id, threading.Lock())
        with lock:
            try:
                step(log_path, policy)
            except FileNotFoundError:
                pass  # the container's directory went with it
            except OSError as e:
                if e.errno not in (errno.ENOENT, errno.ENOTDIR):
                    log.error("log rotation of %s failed: %s", log_path, e)
            except Exception:  # a bug here must cost the log its rotation, not the daemon
                log.exception("log rotation of %s failed", log_path)

    def _loop(self) -> None:
        """The thread: rotate on inotify's word, and sweep every watched log each second.
        With no log to watch it sleeps until a watch comes or the service stops (both write
        to its wake pipe): an idle daemon has no timer waking it."""
        _name_thread(THREAD_NAME)
        poller = select.poll()
        poller.register(self._wake_r, select.POLLIN)
        if self._inotify is not None:
            poller.register(self._inotify.fd, select.POLLIN)
        next_sweep: float | None = None
        while not self._stop.is_set():
            with self._lock:
                watching = bool(self._watched)
            timeout: float | None = None  # for ever
            if not watching:
                next_sweep = None
            else:
                if next_sweep is None:
                    next_sweep = time.monotonic() + SWEEP_INTERVAL
                timeout = max(0.0, next_sweep - time.monotonic()) * 1000
            due: set[str] = set()
            for fd, _mask in poller.poll(timeout):
                if fd == self._wake_r:
                    _drain(fd)
                elif self._inotify is not None:
                    events = self._inotify.read()
                    with self._lock:
                        due |= {self._by_wd[wd] for wd, name in events if name == "ctr.log" and wd in self._by_wd}
            if next_sweep is not None and time.monotonic() >= next_sweep:
                next_sweep = time.monotonic() + SWEEP_INTERVAL
                with self._lock:
                    due = set(self._watched)
            for container_id in due:
                with self._lock:
                    entry = self._watched.get(container_id)
                if entry is not None:
                    self._step(container_id, rotate_step, entry[0], entry[1])

    def _wake(self) -> None:
        """Have the thread look at its table again (a watch came) or at ``_stop``."""
        if self._wake_w < 0:
            return  # the service has ended
        try:
            os.write(self._wake_w, b"\0")
        except BlockingIOError:
            pass  # a wake-up is pending already


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass


def _name_thread(name: str) -> None:
    """The calling thread's name in ps/top and /proc (``comm``; at most 15 bytes)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(PR_SET_NAME, name.encode()[:15], 0, 0, 0)
    except (OSError, AttributeError):
        pass  # a name is a convenience
