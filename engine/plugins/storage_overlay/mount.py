"""Overlay mounting that copes with 100+ layers, and unmounting.

The legacy ``mount(2)`` call takes all options in one page (4096 bytes), which 100 absolute
layer paths overflow. Two ways around it, tried in this order:

1. The new mount API (``fsopen``/``fsconfig``/``fsmount``/``move_mount``, via ctypes) with
   overlay's ``lowerdir+`` key (Linux >= 6.8): one ``fsconfig`` call per layer, so there is
   no total length limit; each path must stay under 256 bytes, which the driver's short
   ``l/<id>`` links guarantee for any sane root. No child process, so it is the fast path.
2. ``mount -t overlay`` in a child process whose cwd is the driver's ``l/`` directory, with
   lowerdirs given as short relative names (docker's trick; the daemon itself must not
   chdir, it has threads). About 11 bytes per layer fits the kernel's 500-layer maximum.

Everything here except ``mount_overlay`` is blocking; the driver runs it in a thread.
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Callable
from pathlib import Path

import attrs
import trio

from engine.errors import InvalidArgument, ResourceExhausted, RuntimeFailure

MOUNT_OPTIONS_MAX = 4095  # one page, minus the terminating NUL
FSCONFIG_STRING_MAX = 255  # the kernel copies fsconfig strings with strndup_user(.., 256)

# Syscall numbers of the new mount API are the same on every architecture but alpha.
_SYS_MOVE_MOUNT = 429
_SYS_FSOPEN = 430
_SYS_FSCONFIG = 431
_SYS_FSMOUNT = 432
_FSOPEN_CLOEXEC = 1
_FSCONFIG_SET_STRING = 1
_FSCONFIG_CMD_CREATE = 6
_FSMOUNT_CLOEXEC = 1
_MOVE_MOUNT_F_EMPTY_PATH = 0x4
_MNT_DETACH = 2

_libc = ctypes.CDLL(None, use_errno=True)


@attrs.frozen
class OverlaySpec:
    """One overlay mount. Lower paths are relative to ``links_dir``, topmost first (the
    kernel's order); upper/work are absolute or None (a read-only overlay)."""

    target: Path
    links_dir: Path
    lower: list[str]
    upper: Path | None = None
    work: Path | None = None

    def legacy_options(self) -> str:
        """Options for ``mount -o`` run with cwd = ``links_dir``."""
        opts = ["lowerdir=" + ":".join(self.lower)]
        if self.upper is not None and self.work is not None:
            opts.append("upperdir=" + os.path.relpath(self.upper, self.links_dir))
            opts.append("workdir=" + os.path.relpath(self.work, self.links_dir))
        return ",".join(opts)


class NewMountApiUnsupported(Exception):
    """The kernel lacks fsopen or overlay's ``lowerdir+``: use the legacy mount."""


# --- mountinfo ---------------------------------------------------------------------------------


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo octal.
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


@attrs.frozen
class MountEntry:
    mount_point: str
    fstype: str
    source: str


def read_mountinfo(path: str = "/proc/self/mountinfo") -> list[MountEntry]:
    entries = []
    with open(path) as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-")
            entries.append(
                MountEntry(_unescape(fields[4]), fields[sep + 1], _unescape(fields[sep + 2]))
            )
    return entries


def is_mounted(target: Path) -> bool:
    where = str(target)
    return any(entry.mount_point == where for entry in read_mountinfo())


def filesystem_of(path: Path) -> str:
    """The fstype of the mount holding ``path`` (its nearest existing ancestor)."""
    path = path.absolute()
    while not path.exists():
        path = path.parent
    where = str(path.resolve())
    best, fstype = -1, "unknown"
    for entry in read_mountinfo():
        point = entry.mount_point
        inside = where == point or where.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= best:  # later entries win: they are mounted on top
            best, fstype = len(point), entry.fstype
    return fstype


# --- new mount API -----------------------------------------------------------------------------


def _syscall(number: int, *args: object) -> int:
    result = _libc.syscall(ctypes.c_long(number), *args)
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(result)


def _fs_messages(fs_fd: int) -> str:
    """The kernel's own error text for an fs context (``e overlayfs: ...`` lines)."""
    lines = []
    while True:
        try:
            lines.append(os.read(fs_fd, 4096).decode(errors="replace").strip())
        except OSError:
            return "; ".join(lines)


def _fsconfig_string(fs_fd: int, key: str, value: str) -> None:
    if len(value.encode()) > FSCONFIG_STRING_MAX:
        raise NewMountApiUnsupported(f"path too long for fsconfig: {value}")
    _syscall(
        _SYS_FSCONFIG,
        ctypes.c_int(fs_fd),
        ctypes.c_uint(_FSCONFIG_SET_STRING),
        ctypes.c_char_p(key.encode()),
        ctypes.c_char_p(value.encode()),
        ctypes.c_int(0),
    )


def mount_new_api(spec: OverlaySpec) -> None:
    """Mount with fsopen/fsconfig; raises NewMountApiUnsupported if the kernel can't."""
    try:
        fs_fd = _syscall(_SYS_FSOPEN, ctypes.c_char_p(b"overlay"), ctypes.c_uint(_FSOPEN_CLOEXEC))
    except OSError as e:
        raise NewMountApiUnsupported(str(e)) from e
    try:
        _configure(fs_fd, spec)
        mnt_fd = _syscall(
            _SYS_FSMOUNT, ctypes.c_int(fs_fd), ctypes.c_uint(_FSMOUNT_CLOEXEC), ctypes.c_uint(0)
        )
        try:
            _syscall(
                _SYS_MOVE_MOUNT,
                ctypes.c_int(mnt_fd),
                ctypes.c_char_p(b""),
                ctypes.c_int(-100),  # AT_FDCWD; the target is absolute anyway
                ctypes.c_char_p(str(spec.target).encode()),
                ctypes.c_uint(_MOVE_MOUNT_F_EMPTY_PATH),
            )
        finally:
            os.close(mnt_fd)
    except OSError as e:
        detail = _fs_messages(fs_fd) or str(e)
        raise RuntimeFailure(
            f"overlay mount of {spec.target} failed: {detail}; check that the layers exist "
            "and the storage root is not itself on overlayfs",
            errno=e.errno,
        ) from e
    finally:
        os.close(fs_fd)


def _configure(fs_fd: int, spec: OverlaySpec) -> None:
    first = True
    for lower in spec.lower:
        path = str(spec.links_dir / lower)
        try:
            _fsconfig_string(fs_fd, "lowerdir+", path)
        except OSError as e:
            messages = _fs_messages(fs_fd)
            # Before Linux 6.8 overlay rejects the key itself: fall back to mount(8).
            if first and e.errno == errno.EINVAL and "nknown parameter" in messages:
                raise NewMountApiUnsupported("overlay has no lowerdir+ (Linux < 6.8)") from e
            raise OSError(e.errno, messages or e.strerror) from e
        first = False
    if spec.upper is not None and spec.work is not None:
        _fsconfig_string(fs_fd, "upperdir", str(spec.upper))
        _fsconfig_string(fs_fd, "workdir", str(spec.work))
    _syscall(
        _SYS_FSCONFIG,
        ctypes.c_int(fs_fd),
        ctypes.c_uint(_FSCONFIG_CMD_CREATE),
        ctypes.c_char_p(None),
        ctypes.c_char_p(None),
        ctypes.c_int(0),
    )


# --- legacy mount(8) in a child with its own cwd ---------------------------------------------------


async def mount_legacy(spec: OverlaySpec) -> None:
    options = spec.legacy_options()
    if len(options.encode()) > MOUNT_OPTIONS_MAX:
        raise ResourceExhausted(
            f"overlay options for {spec.target} are {len(options)} bytes with "
            f"{len(spec.lower)} layers, over the kernel's {MOUNT_OPTIONS_MAX}; flatten the "
            "image (fewer layers) or use Linux >= 6.8"
        )
    result = await trio.run_process(
        ["mount", "-t", "overlay", "overlay", "-o", options, str(spec.target)],
        cwd=spec.links_dir,
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeFailure(
            f"overlay mount of {spec.target} failed: "
            f"{result.stderr.decode(errors='replace').strip()}; check `dmesg | tail` for "
            "overlayfs's reason"
        )


class OverlayMounter:
    """Mounts with the new API when the kernel has it, else with mount(8); remembers which."""

    def __init__(self, *, prefer_new_api: bool = True) -> None:
        self.prefer_new_api = prefer_new_api
        self.new_api: bool | None = None if prefer_new_api else False

    async def mount(self, spec: OverlaySpec) -> None:
        _require_lower(spec)
        if self.new_api is not False:
            try:
                await trio.to_thread.run_sync(mount_new_api, spec)
            except NewMountApiUnsupported:
                self.new_api = False
            else:
                self.new_api = True
                return
        await mount_legacy(spec)

    async def prepare_and_mount(self, prepare: Callable[[], OverlaySpec | None]) -> None:
        """Run ``prepare`` (blocking: make the dirs, return the spec, or None when mounted
        already) and mount what it returns; one worker-thread trip for both once the new
        mount API is known to work here (a container start waits on each trip)."""
        if not self.new_api:
            spec = await trio.to_thread.run_sync(prepare)
            if spec is not None:
                await self.mount(spec)
            return

        def prepare_then_mount() -> None:
            spec = prepare()
            if spec is not None:
                _require_lower(spec)
                mount_new_api(spec)

        await trio.to_thread.run_sync(prepare_then_mount)


def _require_lower(spec: OverlaySpec) -> None:
    if not spec.lower:
        raise InvalidArgument(f"overlay mount of {spec.target} needs at least one lower dir")


# --- unmount -------------------------------------------------------------------------------------


def unmount(target: Path) -> None:
    """Unmount ``target`` (every mount stacked on it); not mounted is fine.

    A busy mount is detached lazily only after a normal unmount failed with EBUSY."""
    raw = str(target).encode()
    for _ in range(16):  # bounded: a mount point rarely holds more than one stacked mount
        if _libc.umount2(ctypes.c_char_p(raw), ctypes.c_int(0)) == 0:
            continue
        err = ctypes.get_errno()
        if err in (errno.EINVAL, errno.ENOENT):
            return  # not a mount point (any more), or gone
        if (
            err == errno.EBUSY
            and _libc.umount2(ctypes.c_char_p(raw), ctypes.c_int(_MNT_DETACH)) == 0
        ):
            continue
        err = ctypes.get_errno()
        raise RuntimeFailure(
            f"cannot unmount {target}: {os.strerror(err)}; find what holds it with "
            f"`fuser -vm {target}`",
            errno=err,
        )
    raise RuntimeFailure(f"{target} still has mounts stacked on it after 16 unmounts")
