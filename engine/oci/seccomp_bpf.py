"""Compile an OCI ``linux.seccomp`` object to a classic BPF program with libseccomp.

crun compiles the profile again at every container start: about 12 ms of its ~18 ms with
the default profile. crun also accepts the finished program in the annotation
``run.oci.seccomp_bpf_data`` (base64), which podman uses too. The daemon compiles each
distinct profile once, with the same libseccomp calls in the same order as crun's
``libcrun_generate_seccomp``, so the program is the one crun would have made (a test
compares the bytes with what crun writes to its state directory).

Profiles this module cannot compile exactly as crun would (a notify action, which needs a
listener fd at start time) are left to the runtime: ``compile_profile`` returns None.
Blocking (ctypes calls): the daemon runs it in a worker thread.
"""

from __future__ import annotations

import base64
import ctypes
import ctypes.util
import functools
import json
import os
from typing import Any

from engine.errors import InvalidArgument

ANNOTATION = "run.oci.seccomp_bpf_data"

_EPERM = 1
_ACTIONS = {
    "SCMP_ACT_KILL": 0x00000000,
    "SCMP_ACT_KILL_THREAD": 0x00000000,
    "SCMP_ACT_KILL_PROCESS": 0x80000000,
    "SCMP_ACT_TRAP": 0x00030000,
    "SCMP_ACT_ERRNO": 0x00050000,  # | errno
    "SCMP_ACT_TRACE": 0x7FF00000,  # | errno (the tracer's message)
    "SCMP_ACT_LOG": 0x7FFC0000,
    "SCMP_ACT_ALLOW": 0x7FFF0000,
}
_WITH_ERRNO = ("SCMP_ACT_ERRNO", "SCMP_ACT_TRACE")
_OPERATORS = {
    "SCMP_CMP_NE": 1,
    "SCMP_CMP_LT": 2,
    "SCMP_CMP_LE": 3,
    "SCMP_CMP_EQ": 4,
    "SCMP_CMP_GE": 5,
    "SCMP_CMP_GT": 6,
    "SCMP_CMP_MASKED_EQ": 7,
}
_NR_SCMP_ERROR = -1


class _ArgCmp(ctypes.Structure):
    _fields_ = [
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    ]


class _Unsupported(Exception):
    """A profile feature that only the runtime itself can apply."""


@functools.lru_cache(maxsize=1)
def _libseccomp() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("seccomp") or "libseccomp.so.2"
    try:
        lib = ctypes.CDLL(name, use_errno=True)
    except OSError:
        return None
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    lib.seccomp_arch_resolve_name.restype = ctypes.c_uint32
    lib.seccomp_arch_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_arch_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.argtypes = [
        ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint, ctypes.POINTER(_ArgCmp)
    ]
    lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
    return lib


def available() -> bool:
    return _libseccomp() is not None


def _action(name: str, errno_ret: int | None) -> int:
    if name not in _ACTIONS:
        raise _Unsupported(name)  # SCMP_ACT_NOTIFY or a name from the future
    if errno_ret is not None and name not in _WITH_ERRNO:
        raise InvalidArgument(f"seccomp: an errno value is given for action {name}, which takes none")
    value = _ACTIONS[name]
    if name in _WITH_ERRNO:
        value |= (_EPERM if errno_ret is None else errno_ret) & 0xFFFF
    return value


def _arch_token(lib: ctypes.CDLL, arch: str) -> int:
    short = arch.removeprefix("SCMP_ARCH_").lower()
    token = int(lib.seccomp_arch_resolve_name(short.encode()))
    if token == 0:
        raise InvalidArgument(f"seccomp: unknown architecture {arch!r}")
    return token


def _arg_filters(args: list[dict[str, Any]]) -> list[list[_ArgCmp]]:
    """crun's rule: all comparisons in one rule (AND), unless one argument index is named
    twice, in which case each comparison becomes a rule of its own (OR)."""
    comparisons = []
    for arg in args[:6]:
        index = int(arg["index"])
        if index >= 6:
            raise InvalidArgument(f"seccomp: argument index {index} is out of range (0-5)")
        op = _OPERATORS.get(arg.get("op", ""))
        if op is None:
            raise InvalidArgument(f"seccomp: unknown operator {arg.get('op')!r}")
        comparisons.append(_ArgCmp(index, op, int(arg.get("value", 0)), int(arg.get("valueTwo", 0))))
    indexes = [c.arg for c in comparisons]
    if len(set(indexes)) != len(indexes):
        return [[c] for c in comparisons]
    return [comparisons]


def _build(lib: ctypes.CDLL, ctx: int, profile: dict[str, Any]) -> int:
    """Add the profile's architectures and rules to ``ctx``; returns the default action."""
    default = _action(profile["defaultAction"], profile.get("defaultErrnoRet"))
    for arch in profile.get("architectures") or []:
        ret = lib.seccomp_arch_add(ctx, _arch_token(lib, arch))
        if ret < 0 and ret != -17:  # EEXIST: the native one
            raise InvalidArgument(f"seccomp: cannot add architecture {arch}: {os.strerror(-ret)}")
    for rule in profile.get("syscalls") or []:
        action = _action(rule["action"], rule.get("errnoRet"))
        if action == default:
            continue
        filters = _arg_filters(rule["args"]) if rule.get("args") else [[]]
        for name in rule.get("names") or []:
            number = lib.seccomp_syscall_resolve_name(name.encode())
            if number == _NR_SCMP_ERROR:
                continue  # crun warns and ignores a name this libseccomp does not know
            for comparisons in filters:
                array = (_ArgCmp * len(comparisons))(*comparisons) if comparisons else None
                ret = lib.seccomp_rule_add_array(ctx, action, number, len(comparisons), array)
                if ret < 0:
                    raise InvalidArgument(f"seccomp: rule for {name} refused: {os.strerror(-ret)}")
    return default


def _export(lib: ctypes.CDLL, ctx: int) -> bytes:
    fd = os.memfd_create("seccomp-bpf", os.MFD_CLOEXEC)
    try:
        ret = lib.seccomp_export_bpf(ctx, fd)
        if ret < 0:
            raise InvalidArgument(f"seccomp: cannot export the filter: {os.strerror(-ret)}")
        size = os.fstat(fd).st_size
        return os.pread(fd, size, 0)
    finally:
        os.close(fd)


def compile_profile(profile: dict[str, Any]) -> bytes | None:
    """The BPF program for ``profile``, or None when the runtime has to compile it itself
    (no libseccomp here, or a feature only the runtime can apply)."""
    return _compile_cached(json.dumps(profile, sort_keys=True))


@functools.lru_cache(maxsize=32)
def _compile_cached(profile_json: str) -> bytes | None:
    lib = _libseccomp()
    if lib is None:
        return None
    profile = json.loads(profile_json)
    try:
        default = _action(profile["defaultAction"], profile.get("defaultErrnoRet"))
    except _Unsupported:
        return None
    ctx = lib.seccomp_init(default)
    if not ctx:
        raise InvalidArgument(f"seccomp: invalid default action {profile['defaultAction']}")
    try:
        _build(lib, ctx, profile)
        return _export(lib, ctx)
    except _Unsupported:
        return None
    finally:
        lib.seccomp_release(ctx)


def annotate(spec: dict[str, Any]) -> dict[str, Any]:
    """``spec`` with its seccomp profile precompiled into crun's annotation (unchanged when
    there is no profile or it cannot be precompiled). The profile stays in the spec, for
    inspection and for any runtime that does not know the annotation."""
    profile = (spec.get("linux") or {}).get("seccomp")
    if not profile:
        return spec
    program = compile_profile(profile)
    if program is None:
        return spec
    annotations = dict(spec.get("annotations") or {})
    annotations[ANNOTATION] = base64.b64encode(program).decode()
    return {**spec, "annotations": annotations}
