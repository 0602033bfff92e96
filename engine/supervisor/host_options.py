"""docker's host options on a create (``--privileged``, ``--security-opt``, ``--sysctl``,
``--ulimit``, ``--shm-size``, ``--oom-score-adj``, ``--group-add``, ``--pid/--ipc/--uts``,
``--memory-swap``, ``--cpu-quota/--cpu-period``, ``--device``, ``--memory-reservation``,
``--oom-kill-disable``): checked with docker's rules
and messages, and written into the container's config. Nothing here runs for a create
that gives none of them. ``-m`` without ``--memory-swap`` (or with 0) gets dockerd's
default, twice the memory, where the kernel accounts swap (as dockerd's cgroup shows).
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any

from engine.actors.model import ContainerConfig
from engine.actors.verbs import MIN_MEMORY
from engine.errors import InvalidArgument

# docker's --ulimit names (moby's go-units), and their RLIMIT_ keys
ULIMIT_NAMES = ("core", "cpu", "data", "fsize", "locks", "memlock", "msgqueue", "nice", "nofile", "nproc",
                "rss", "rtprio", "rttime", "sigpending", "stack")
# Namespaced sysctls a container may set (docker's opts.ValidateSysctl, runc's validation)
IPC_SYSCTLS = frozenset({"kernel.msgmax", "kernel.msgmnb", "kernel.msgmni", "kernel.sem", "kernel.shmall",
                         "kernel.shmmax", "kernel.shmmni", "kernel.shm_rmid_forced"})
IPC_SYSCTL_PREFIXES = ("fs.mqueue.",)
NET_SYSCTL_PREFIX = "net."
NAMESPACE_MODES = ("pid", "ipc", "uts")
MIN_CFS = 1000  # microseconds: docker's lower bound for --cpu-quota and --cpu-period
MAX_CFS_PERIOD = 1_000_000
OOM_SCORE_ADJ_RANGE = (-1000, 1000)
SWAP_ACCOUNTING_FILES = (Path("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes"),)


def apply_host_options(config: ContainerConfig, p: Any) -> None:
    """Check ``p``'s (a CreateSpec's) host options and set them on ``config``."""
    if p.privileged:
        config.privileged = True
    if p.security_opt:
        _security_opts(config, list(p.security_opt))
    for kind in NAMESPACE_MODES:
        mode = getattr(p, kind)
        if mode:
            _namespace_mode(config, kind, mode)
    if p.sysctls:
        config.sysctls = check_sysctls(dict(p.sysctls), config)
    if p.ulimits:
        config.ulimits = parse_ulimits(list(p.ulimits))
    if p.shm_size is not None:
        if p.shm_size < 0:
            raise InvalidArgument("SHM size can not be less than 0")
        config.shm_size = p.shm_size or None
    if p.oom_score_adj is not None:
        config.oom_score_adj = check_oom_score_adj(p.oom_score_adj)
    if p.group_add:
        config.group_add = [check_group(g) for g in p.group_add]
    if p.memory_swap is not None and p.memory_swap != 0:
        config.memory_swap = check_memory_swap(config.memory, p.memory_swap)
    elif config.memory and swap_accounting():
        config.memory_swap = 2 * config.memory  # dockerd's default: as much swap as memory
    if p.cpu_quota is not None or p.cpu_period is not None:
        _cfs(config, p.cpu_quota, p.cpu_period)
    if p.devices:
        config.devices = list(p.devices)
    if p.memory_reservation:
        config.memory_reservation = check_memory_reservation(config.memory, p.memory_reservation)
    config.oom_kill_disable = bool(p.oom_kill_disable)


def check_memory_reservation(memory: int | None, reservation: int) -> int:
    """dockerd's rules for ``--memory-reservation`` (the soft limit)."""
    if reservation < MIN_MEMORY:
        raise InvalidArgument("Minimum memory reservation allowed is 6MB")
    if memory and memory < reservation:
        raise InvalidArgument("Minimum memory limit can not be less than memory reservation limit, see usage")
    return reservation


def _security_opts(config: ContainerConfig, opts: list[str]) -> None:
    """docker's parseSecurityOpt: ``no-new-privileges[=|:true|false]``, ``seccomp=unconfined|
    JSON`` (docker's CLI sends a profile file's content); apparmor and label are refused by
    name, being unavailable here."""
    for opt in opts:
        if opt == "no-new-privileges":
            config.no_new_privileges = True
            continue
        if "=" in opt:
            key, value = opt.split("=", 1)
        elif ":" in opt:
            key, value = opt.split(":", 1)
        else:
            raise InvalidArgument(f"invalid --security-opt 1: {opt!r}")
        if key == "no-new-privileges":
            config.no_new_privileges = _parse_bool(value, opt)
        elif key == "seccomp":
            _seccomp(config, value)
        elif key in ("apparmor", "label"):
            raise InvalidArgument(f"--security-opt {key} is not supported by engine: this host has no "
                                  f"{'AppArmor' if key == 'apparmor' else 'SELinux'} confinement for containers")
        else:
            raise InvalidArgument(f"invalid --security-opt 2: {opt!r}")
    config.security_opt = list(opts)


def _parse_bool(value: str, opt: str) -> bool:
    # Go's strconv.ParseBool
    if value in ("1", "t", "T", "true", "TRUE", "True"):
        return True
    if value in ("0", "f", "F", "false", "FALSE", "False"):
        return False
    raise InvalidArgument(f"invalid --security-opt 2: {opt!r}")


def _seccomp(config: ContainerConfig, value: str) -> None:
    if value == "unconfined":
        config.seccomp_profile = "unconfined"
        config.seccomp_json = ""
        return
    if value in ("", "builtin", "default"):
        config.seccomp_profile = ""
        config.seccomp_json = ""
        return
    try:
        profile = json.loads(value)
    except ValueError:
        raise InvalidArgument("--security-opt seccomp: the profile must be 'unconfined' or a profile's JSON "
                              "(docker's CLI and engctl read a file given by path and send its content)") from None
    if not isinstance(profile, dict) or "defaultAction" not in profile:
        raise InvalidArgument("--security-opt seccomp: the profile has no defaultAction; "
                              "give a seccomp profile in docker's format")
    config.seccomp_profile = ""
    config.seccomp_json = json.dumps(profile, separators=(",", ":"))


def _namespace_mode(config: ContainerConfig, kind: str, mode: str) -> None:
    """``--pid/--ipc/--uts host``; ``container:NAME`` is refused for now."""
    if kind == "ipc" and mode in ("private", "shareable", "none"):
        return  # the engine's default: a private IPC namespace (docker's `none` still has one)
    if mode == "host":
        if kind == "uts" and config.hostname:
            raise InvalidArgument("Conflicting options: hostname and the UTS mode")
        config.namespaces[kind] = "host"
        return
    if kind == "pid" and mode == "private" or kind == "uts" and mode == "private":
        return
    if mode.startswith("container:"):
        raise InvalidArgument(f"--{kind} {mode}: joining another container's {kind.upper()} namespace is not "
                              "supported by engine yet; use host or leave it out")
    raise InvalidArgument(f"--{kind}: invalid {kind.upper()} mode {mode!r}")


def check_sysctls(sysctls: dict[str, str], config: ContainerConfig) -> dict[str, str]:
    """docker's allowed namespaced sysctls; net.* not in the host's network namespace, IPC
    ones not in the host's IPC namespace (runc refuses both at start otherwise)."""
    for key, value in sysctls.items():
        if key.startswith(NET_SYSCTL_PREFIX):
            if config.network_mode == "host":
                raise InvalidArgument(f"sysctl {key!r} is not allowed in the host's network namespace "
                                      "(--network host)")
        elif key in IPC_SYSCTLS or key.startswith(IPC_SYSCTL_PREFIXES):
            if config.namespaces.get("ipc") == "host":
                raise InvalidArgument(f"sysctl {key!r} is not allowed in the host's IPC namespace (--ipc host)")
        else:
            raise InvalidArgument(f"sysctl '{key}={value}' is not allowed: only namespaced sysctls "
                                  "(net.*, fs.mqueue.*, kernel.msg*, kernel.sem, kernel.shm*) may be set")
    return sysctls


def parse_ulimits(specs: list[str]) -> dict[str, list[int]]:
    """docker's ``--ulimit name=soft[:hard]`` (go-units ParseUlimit); -1 is unlimited."""
    out: dict[str, list[int]] = {}
    for spec in specs:
        name, sep, values = spec.partition("=")
        if not sep:
            raise InvalidArgument(f"invalid ulimit argument: {spec}")
        if name not in ULIMIT_NAMES:
            raise InvalidArgument(f"invalid ulimit type: {name}")
        soft_text, _, hard_text = values.partition(":")
        try:
            soft = int(soft_text)
            hard = int(hard_text) if hard_text else soft
        except ValueError:
            raise InvalidArgument(f"invalid ulimit argument: {spec}: the limits must be whole numbers") from None
        if soft < -1 or hard < -1:
            raise InvalidArgument(f"invalid ulimit argument: {spec}: a limit is a count, or -1 for unlimited")
        if hard != -1 and (soft == -1 or soft > hard):
            raise InvalidArgument(f"ulimit soft limit must be less than or equal to hard limit: {soft} > {hard}")
        out[name] = [soft, hard]
    return out


def check_oom_score_adj(value: int) -> int:
    low, high = OOM_SCORE_ADJ_RANGE
    if not low <= value <= high:
        raise InvalidArgument(f"Invalid value {value}, range for oom score adj is [{low}, {high}]")
    own = own_oom_score_adj()
    if value < own:
        # a process without CAP_SYS_RESOURCE may not lower it; the runtime would fail at start
        raise InvalidArgument(f"--oom-score-adj {value} is below the engine's own ({own}): this host does not "
                              "let the engine lower it (no CAP_SYS_RESOURCE); use a value from "
                              f"{own} to {high}")
    return value


def own_oom_score_adj() -> int:
    try:
        return int(Path("/proc/self/oom_score_adj").read_text())
    except (OSError, ValueError):
        return 0


def check_group(group: str) -> str:
    """A gid or a group name; names are looked up in the image's /etc/group at start."""
    if not group or ":" in group or "\n" in group:
        raise InvalidArgument(f"invalid --group-add {group!r}: use a gid or a group name")
    if group.isdigit() and int(group) >= 2**32 - 1:
        raise InvalidArgument(f"invalid --group-add {group!r}: the gid is out of range")
    return group


def check_memory_swap(memory: int | None, swap: int) -> int:
    """docker's --memory-swap: memory plus swap, -1 unlimited; it needs --memory."""
    if swap < -1:
        raise InvalidArgument("invalid --memory-swap: use a size at least --memory, or -1 for unlimited swap")
    if not memory:
        if swap == -1:
            return swap  # docker takes it: no memory limit, so no swap limit either
        raise InvalidArgument("You should always set the Memory limit when using Memoryswap limit, see usage")
    if swap != -1 and swap < memory:
        raise InvalidArgument("Minimum memoryswap limit should be larger than memory limit, see usage")
    require_swap_accounting()
    return swap


def require_swap_accounting() -> None:
    if not swap_accounting():
        raise InvalidArgument("--memory-swap needs the kernel's swap accounting (memory.memsw.* of cgroup v1), "
                              "which this host lacks; boot with swapaccount=1 or leave --memory-swap out")


@functools.cache
def swap_accounting() -> bool:
    return any(os.path.exists(path) for path in SWAP_ACCOUNTING_FILES)


def _cfs(config: ContainerConfig, quota: int | None, period: int | None) -> None:
    """docker's --cpu-quota / --cpu-period (microseconds); neither goes with --cpus."""
    if config.cpus is not None:
        which = "CPU Period" if period else "CPU Quota"
        raise InvalidArgument(f"Conflicting options: Nano CPUs and {which} cannot both be set")
    if quota is not None and quota != 0:
        if 0 < quota < MIN_CFS:
            raise InvalidArgument("CPU cfs quota can not be less than 1ms (i.e. 1000)")
        if quota < -1:
            raise InvalidArgument(f"invalid --cpu-quota {quota}: use microseconds from 1000, or -1 for no limit")
        config.cpu_quota = quota
    if period is not None and period != 0:
        if not MIN_CFS <= period <= MAX_CFS_PERIOD:
            raise InvalidArgument("CPU cfs period can not be less than 1ms (i.e. 1000) or larger than 1s "
                                  "(i.e. 1000000)")
        config.cpu_period = period
