"""Build an OCI runtime-spec ``config.json`` (a dict) from ``SpecOptions``.

The defaults are docker's: 14 capabilities, the default seccomp profile, masked and
read-only ``/proc`` paths, a new set of namespaces, a tmpfs ``/dev``. cgroups are driven
through cgroupfs (``cgroupsPath="/engine/<id>"``), never systemd.

Every rlimit is clamped to the engine's own hard limits: a process without
CAP_SYS_RESOURCE cannot raise a hard limit, so a larger value makes runc/crun fail with
EPERM at start.

``build_spec`` is blocking (it reads the rootfs's /etc/passwd and the seccomp template):
call it through ``trio.to_thread.run_sync`` from the daemon.
"""

from __future__ import annotations

import json
import resource
from pathlib import Path
from typing import Any

import attrs

from engine.errors import InvalidArgument
from engine.oci import seccomp
from engine.oci.devices import device_rules, host_devices
from engine.oci.propagation import rootfs_propagation
from engine.oci.user import ExecUser, resolve_groups, resolve_user

OCI_VERSION = "1.0.2"
DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
INIT_BINARY = Path("/usr/bin/catatonit")
# /dev is a fresh tmpfs in every container, so binding the init there never touches the
# image's filesystem (it may be read-only).
INIT_DESTINATION = "/dev/init"

DEFAULT_CAPABILITIES: tuple[str, ...] = (
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
)
MASKED_PATHS: tuple[str, ...] = (
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
)
READONLY_PATHS: tuple[str, ...] = (
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
)
_NAMESPACES = ("pid", "ipc", "uts", "mount", "network")
# Linux resource numbers (Python's resource module lacks some of them).
_RLIMITS = {
    "RLIMIT_CPU": 0,
    "RLIMIT_FSIZE": 1,
    "RLIMIT_DATA": 2,
    "RLIMIT_STACK": 3,
    "RLIMIT_CORE": 4,
    "RLIMIT_RSS": 5,
    "RLIMIT_NPROC": 6,
    "RLIMIT_NOFILE": 7,
    "RLIMIT_MEMLOCK": 8,
    "RLIMIT_AS": 9,
    "RLIMIT_LOCKS": 10,
    "RLIMIT_SIGPENDING": 11,
    "RLIMIT_MSGQUEUE": 12,
    "RLIMIT_NICE": 13,
    "RLIMIT_RTPRIO": 14,
    "RLIMIT_RTTIME": 15,
}
# podman's defaults; clamped below to what this engine may grant.
DEFAULT_RLIMITS: dict[str, tuple[int, int]] = {"RLIMIT_NOFILE": (1048576, 1048576)}
_CFS_PERIOD = 100_000


@attrs.frozen
class BindMount:
    source: Path
    destination: str
    read_only: bool = False
    options: tuple[str, ...] = ()  # extra mount options, e.g. ("rprivate",)


@attrs.frozen
class TmpfsMount:
    """A user's tmpfs (``--tmpfs``, ``--mount type=tmpfs``): its options go over docker's
    defaults (``merge_tmpfs_options``); no size cap unless one is given, as dockerd."""

    destination: str
    options: tuple[str, ...] = ()


@attrs.frozen
class SpecOptions:
    """Everything the engine decides about one container's runtime configuration."""

    container_id: str
    rootfs: Path
    args: list[str]
    env: list[str] = attrs.field(factory=list)
    cwd: str = "/"
    user: str = ""  # docker --user syntax, resolved against the rootfs
    hostname: str = ""
    domainname: str = ""
    mounts: list[BindMount] = attrs.field(factory=list)
    tmpfs: list[TmpfsMount] = attrs.field(factory=list)
    read_only: bool = False
    init: bool = False
    memory: int | None = None  # bytes
    memory_swap: int | None = None  # memory + swap in bytes (docker); -1 = unlimited
    cpus: float | None = None
    pids_limit: int | None = None
    cap_add: list[str] = attrs.field(factory=list)
    cap_drop: list[str] = attrs.field(factory=list)
    privileged: bool = False
    network_ns: str | None = None  # None = new netns, "host" = host's, else a netns path
    namespaces: dict[str, str | None] = attrs.field(factory=dict)  # type -> path | None
    cgroups_path: str | None = None  # default /engine/<id> (cgroupfs)
    terminal: bool = False
    rlimits: dict[str, tuple[int, int]] = attrs.field(factory=dict)  # "nofile"|"RLIMIT_NOFILE"
    oom_score_adj: int | None = None
    sysctls: dict[str, str] = attrs.field(factory=dict)
    seccomp_profile: Path | None = None  # None = default; Path("unconfined") = none
    no_new_privileges: bool = False
    annotations: dict[str, str] = attrs.field(factory=dict)
    spec_patch: dict[str, Any] = attrs.field(factory=dict)  # merged over the result (apply_patch)
    additional_gids: list[int] = attrs.field(factory=list)  # beside the user's groups in the image
    cpu_shares: int | None = None
    cpuset_cpus: str = ""
    cpuset_mems: str = ""
    shm_size: int | None = None  # bytes of /dev/shm (docker's --shm-size); None: 64 MiB
    group_add: list[str] = attrs.field(factory=list)  # gids or names in the image's /etc/group
    seccomp_template: dict[str, Any] | None = None  # a profile given by content, over seccomp_profile
    cpu_quota: int | None = None  # microseconds per period
    cpu_period: int | None = None  # microseconds
    memory_reservation: int | None = None  # bytes: the soft limit
    oom_kill_disable: bool = False
    devices: list[str] = attrs.field(factory=list)  # docker's --device HOST[:CONTAINER[:rwm]]


# --- process ---------------------------------------------------------------------------------


@attrs.frozen
class ProcessOverrides:
    """What ``run``/``create`` options override from the image config (None = keep)."""

    entrypoint: list[str] | None = None
    cmd: list[str] | None = None
    env: list[str] = attrs.field(factory=list)
    workdir: str | None = None
    user: str | None = None


@attrs.frozen
class ResolvedProcess:
    args: list[str]
    env: list[str]
    cwd: str
    user: str


def merge_env(*layers: list[str]) -> list[str]:
    """Later layers win per key; order of first appearance is kept (docker's rule)."""
    merged: dict[str, str] = {}
    for layer in layers:
        for item in layer:
            key, sep, value = item.partition("=")
            if not key:
                raise InvalidArgument(f"invalid environment entry {item!r}: expected KEY=VALUE")
            merged[key] = f"{key}={value}" if sep else f"{key}="
    return list(merged.values())


def resolve_process(
    image_config: dict[str, Any] | None, overrides: ProcessOverrides
) -> ResolvedProcess:
    """Combine an OCI image config's ``config`` section with run options, docker's way.

    ``--entrypoint`` replaces the image entrypoint and drops the image ``Cmd`` unless a cmd
    is also given; env is the image's then the run's (later keys win); PATH gets a default;
    an empty workdir means ``/``."""
    cfg = image_config or {}
    entrypoint = list(cfg.get("Entrypoint") or [])
    cmd = list(cfg.get("Cmd") or [])
    if overrides.entrypoint is not None:
        entrypoint = list(overrides.entrypoint)
        cmd = []
    if overrides.cmd is not None:
        cmd = list(overrides.cmd)
    args = entrypoint + cmd
    if not args:
        raise InvalidArgument(
            "no command to run: the image defines neither Entrypoint nor Cmd; "
            "give a command after the image name"
        )
    env = merge_env(list(cfg.get("Env") or []), overrides.env)
    if not any(e.startswith("PATH=") for e in env):
        env.insert(0, DEFAULT_PATH)
    workdir = overrides.workdir if overrides.workdir is not None else cfg.get("WorkingDir")
    user = overrides.user if overrides.user is not None else cfg.get("User") or ""
    return ResolvedProcess(args=args, env=env, cwd=workdir or "/", user=user)


# --- capabilities and limits -------------------------------------------------------------------


def _all_capabilities() -> list[str]:
    try:
        last = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    except OSError:
        last = 40
    names = [
        "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID",
        "SETUID", "SETPCAP", "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST",
        "NET_ADMIN", "NET_RAW", "IPC_LOCK", "IPC_OWNER", "SYS_MODULE", "SYS_RAWIO",
        "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT", "SYS_ADMIN", "SYS_BOOT", "SYS_NICE",
        "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD", "LEASE", "AUDIT_WRITE",
        "AUDIT_CONTROL", "SETFCAP", "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG", "WAKE_ALARM",
        "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF", "CHECKPOINT_RESTORE",
    ]  # fmt: skip
    every = ["CAP_" + n for n in names[: last + 1]]
    # "all" can only be what this process holds: a capability outside its bounding set
    # makes the runtime fail with EPERM (root here lacks CAP_SYS_RESOURCE)
    bounding = _own_bounding_set()
    return [cap for i, cap in enumerate(every) if bounding is None or bounding >> i & 1]


def _own_bounding_set() -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapBnd:"):
                return int(line.split()[1], 16)
    except (OSError, ValueError):
        pass
    return None


def _normalise_cap(name: str) -> str:
    upper = name.strip().upper()
    return upper if upper.startswith("CAP_") or upper == "ALL" else "CAP_" + upper


def capabilities(options: SpecOptions) -> list[str]:
    """docker's rule: start from the default set (or all if privileged), add, then drop."""
    every = _all_capabilities()
    caps = list(every if options.privileged else DEFAULT_CAPABILITIES)
    for raw in options.cap_add:
        name = _normalise_cap(raw)
        if name == "ALL":
            caps = list(every)
        elif name not in every:
            raise InvalidArgument(f"unknown capability {raw!r} in cap_add")
        elif name not in caps:
            caps.append(name)
    drops = {_normalise_cap(c) for c in options.cap_drop}
    if "ALL" in drops:
        return []
    return [c for c in caps if c not in drops]


def _rlimit_key(name: str) -> str:
    upper = name.upper()
    key = upper if upper.startswith("RLIMIT_") else "RLIMIT_" + upper
    if key not in _RLIMITS:
        raise InvalidArgument(f"unknown rlimit {name!r}; use names such as nofile or nproc")
    return key


def clamp_rlimit(key: str, soft: int, hard: int) -> tuple[int, int]:
    """Limit (soft, hard) to what this process may grant: its own hard limit."""
    _, own_hard = resource.getrlimit(_RLIMITS[key])
    if own_hard != resource.RLIM_INFINITY:
        hard = own_hard if hard < 0 else min(hard, own_hard)
        soft = hard if soft < 0 else min(soft, hard)
    return soft, hard


def rlimits(options: SpecOptions) -> list[dict[str, Any]]:
    wanted = dict(DEFAULT_RLIMITS)
    for name, (soft, hard) in options.rlimits.items():
        wanted[_rlimit_key(name)] = (soft, hard)
    out = []
    for key, (soft, hard) in sorted(wanted.items()):
        if soft > hard >= 0:
            raise InvalidArgument(f"rlimit {key}: soft limit {soft} exceeds hard limit {hard}")
        soft, hard = clamp_rlimit(key, soft, hard)
        out.append({"type": key, "soft": soft, "hard": hard})
    return out


def _resources(options: SpecOptions) -> dict[str, Any]:
    res: dict[str, Any] = {
        "devices": [{"allow": False, "access": "rwm"}]
        if not options.privileged
        else [{"allow": True, "access": "rwm"}],
    }
    if options.memory is not None:
        if options.memory < 6 * 1024 * 1024:
            raise InvalidArgument("memory limit must be at least 6 MiB (docker's minimum)")
        memory: dict[str, Any] = {"limit": options.memory}
        if options.memory_swap is not None:
            if 0 <= options.memory_swap < options.memory:
                raise InvalidArgument("memory_swap (memory plus swap) must be >= memory, or -1")
            memory["swap"] = options.memory_swap
        res["memory"] = memory
    if options.memory_reservation:
        res.setdefault("memory", {})["reservation"] = options.memory_reservation
    if options.oom_kill_disable:
        res.setdefault("memory", {})["disableOOMKiller"] = True
    if options.cpus is not None:
        if options.cpus <= 0:
            raise InvalidArgument(f"cpus must be positive, got {options.cpus}")
        res["cpu"] = {"quota": int(options.cpus * _CFS_PERIOD), "period": _CFS_PERIOD}
    if options.cpu_quota is not None or options.cpu_period is not None:
        cpu = res.setdefault("cpu", {})
        if options.cpu_quota is not None:
            cpu["quota"] = options.cpu_quota
        if options.cpu_period is not None:
            cpu["period"] = options.cpu_period
    if options.devices:
        res["devices"] += device_rules(options.devices)
    placement = {key: value for key, value in (("shares", options.cpu_shares), ("cpus", options.cpuset_cpus),
                                               ("mems", options.cpuset_mems)) if value}
    if placement:
        res.setdefault("cpu", {}).update(placement)
    if options.pids_limit is not None and options.pids_limit > 0:
        res["pids"] = {"limit": options.pids_limit}
    return res


# --- mounts -------------------------------------------------------------------------------------


def _shm_mount(options: SpecOptions) -> dict[str, Any]:
    if options.namespaces.get("ipc") == "host":
        # the host's IPC namespace: its /dev/shm too, as docker binds it
        return {"destination": "/dev/shm", "type": "bind", "source": "/dev/shm",
                "options": ["rbind", "nosuid", "noexec", "nodev"]}  # fmt: skip
    size = f"size={options.shm_size // 1024}k" if options.shm_size else "size=65536k"
    return {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
            "options": ["nosuid", "noexec", "nodev", "mode=1777", size]}  # fmt: skip


def standard_mounts(options: SpecOptions) -> list[dict[str, Any]]:
    sys_ro = [] if options.privileged else ["ro"]
    shm = _shm_mount(options)
    return [
        {"destination": "/proc", "type": "proc", "source": "proc",
         "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
        shm,
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
         "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs",
         "options": ["nosuid", "noexec", "nodev", *sys_ro]},
        {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
         "options": ["nosuid", "noexec", "nodev", "relatime", *sys_ro]},
    ]  # fmt: skip


def _check_destination(dest: str) -> str:
    if not dest.startswith("/"):
        raise InvalidArgument(f"mount destination {dest!r} must be an absolute path")
    return dest


# docker's defaults under a user's tmpfs options (moby's daemon/oci_linux.go)
TMPFS_DEFAULTS = ("noexec", "nosuid", "nodev", "rprivate")
# mount flags by the bit they set or clear: of two options on one bit the last one given wins
_TMPFS_FLAG_KEYS = {
    "ro": "rdonly", "rw": "rdonly", "suid": "nosuid", "nosuid": "nosuid", "dev": "nodev", "nodev": "nodev",
    "exec": "noexec", "noexec": "noexec", "sync": "sync", "async": "sync", "dirsync": "dirsync",
    "remount": "remount", "mand": "mand", "nomand": "mand", "atime": "noatime", "noatime": "noatime",
    "diratime": "nodiratime", "nodiratime": "nodiratime", "bind": "bind", "rbind": "rbind",
    "relatime": "relatime", "norelatime": "relatime", "strictatime": "strictatime",
    "nostrictatime": "strictatime",
    # one propagation mode only
    **dict.fromkeys(("private", "rprivate", "shared", "rshared", "slave", "rslave", "unbindable",
                     "runbindable"), "propagation"),
}
_TMPFS_DATA_KEYS = {"", "size", "mode", "uid", "gid", "nr_inodes", "nr_blocks", "mpol"}


def merge_tmpfs_options(given: tuple[str, ...] | list[str]) -> list[str]:
    """docker's ``MergeTmpfsOptions`` over ``TMPFS_DEFAULTS``: per flag bit or data key the
    last option wins and keeps its place; "defaults" is dropped; anything else is refused
    (dockerd's words)."""
    kept: list[str] = []
    seen: set[str] = set()
    for option in reversed([*TMPFS_DEFAULTS, *given]):
        if option == "defaults":
            continue
        key = _TMPFS_FLAG_KEYS.get(option)
        if key is None:
            name, sep, _ = option.partition("=")
            if not sep or name not in _TMPFS_DATA_KEYS:
                quoted = " ".join(json.dumps(part) for part in option.split("=", 1))
                raise InvalidArgument(f"invalid tmpfs option [{quoted}]")
            key = "=" + name
        if key not in seen:
            seen.add(key)
            kept.insert(0, option)
    return kept


def user_mounts(options: SpecOptions) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for tmpfs in options.tmpfs:
        out.append({"destination": _check_destination(tmpfs.destination), "type": "tmpfs",
                    "source": "tmpfs", "options": merge_tmpfs_options(tmpfs.options)})  # fmt: skip
    for bind in options.mounts:
        opts = ["rbind", "ro" if bind.read_only else "rw", *bind.options]
        out.append({"destination": _check_destination(bind.destination), "type": "bind",
                    "source": str(bind.source), "options": opts})  # fmt: skip
    if options.init:
        out.append({"destination": INIT_DESTINATION, "type": "bind",
                    "source": str(INIT_BINARY), "options": ["bind", "ro", "nosuid", "nodev"]})  # fmt: skip
    return out


# --- namespaces -------------------------------------------------------------------------------


def namespaces(options: SpecOptions) -> list[dict[str, Any]]:
    wanted: dict[str, str | None] = {name: None for name in _NAMESPACES}
    if options.network_ns == "host":
        del wanted["network"]
    elif options.network_ns is not None:
        wanted["network"] = options.network_ns
    for name, path in options.namespaces.items():
        if path == "host":
            wanted.pop(name, None)
        else:
            wanted[name] = path
    out = []
    for name, path in wanted.items():
        out.append({"type": name, "path": path} if path else {"type": name})
    return out


# --- the whole spec -----------------------------------------------------------------------------


def _process(options: SpecOptions, user: ExecUser, caps: list[str]) -> dict[str, Any]:
    if not options.args:
        raise InvalidArgument("the container has no command (args is empty)")
    env = list(options.env)
    if not any(e.startswith("PATH=") for e in env):
        env.insert(0, DEFAULT_PATH)
    if not any(e.startswith("HOME=") for e in env):
        env.append(f"HOME={user.home}")
    if options.hostname and not any(e.startswith("HOSTNAME=") for e in env):
        env.append(f"HOSTNAME={options.hostname}")
    args = [INIT_DESTINATION, "--", *options.args] if options.init else list(options.args)
    process: dict[str, Any] = {
        "terminal": options.terminal,
        "user": {"uid": user.uid, "gid": user.gid},
        "args": args,
        "env": env,
        "cwd": options.cwd or "/",
        "capabilities": {
            "bounding": caps,
            "effective": caps,
            "permitted": caps,
            # root keeps its capabilities across exec without ambient; non-root gets none,
            # like docker (inheritable stays empty on purpose: CVE-2022-24769).
        },
        "rlimits": rlimits(options),
        "noNewPrivileges": options.no_new_privileges,
    }
    extra = list(options.additional_gids)
    if options.group_add:
        extra += resolve_groups(options.rootfs, options.group_add)
    gids = list(user.additional_gids) + [g for g in dict.fromkeys(extra) if g not in user.additional_gids]
    if gids:
        process["user"]["additionalGids"] = gids
    if options.oom_score_adj is not None:
        process["oomScoreAdj"] = options.oom_score_adj
    return process


def _seccomp(options: SpecOptions, caps: list[str]) -> dict[str, Any] | None:
    if options.privileged or options.seccomp_profile == Path("unconfined"):
        return None
    if options.seccomp_template is not None:
        return seccomp.convert(options.seccomp_template, frozenset(caps))
    if options.seccomp_profile is None:
        return seccomp.default_profile(frozenset(caps))
    return seccomp.convert(seccomp.load_template(options.seccomp_profile), frozenset(caps))


def _linux(options: SpecOptions, caps: list[str]) -> dict[str, Any]:
    linux: dict[str, Any] = {
        "namespaces": namespaces(options),
        "resources": _resources(options),
        "cgroupsPath": options.cgroups_path or f"/engine/{options.container_id}",
        "sysctl": dict(options.sysctls),
    }
    if not options.privileged:
        linux["maskedPaths"] = list(MASKED_PATHS)
        linux["readonlyPaths"] = list(READONLY_PATHS)
    if options.privileged or options.devices:
        # a --device given beside --privileged wins for its path
        devices = {d["path"]: d for d in (host_devices() if options.privileged else [])}
        devices.update((d["path"], d) for d in host_devices(options.devices))
        linux["devices"] = list(devices.values())
    profile = _seccomp(options, caps)
    if profile is not None:
        linux["seccomp"] = profile
    rootfs = rootfs_propagation([o for m in options.mounts for o in m.options])
    if rootfs:
        linux["rootfsPropagation"] = rootfs  # else the binds' peers are cut off at the root
    return linux


def build_spec(options: SpecOptions) -> dict[str, Any]:
    """The config.json for ``options``. Blocking (reads the rootfs and the seccomp file).

    Errors: ``InvalidArgument`` for a bad option (unknown user, capability, rlimit, ...)."""
    if not options.rootfs.is_dir():
        raise InvalidArgument(f"root filesystem {options.rootfs} is not a directory")
    user = resolve_user(options.rootfs, options.user)
    caps = capabilities(options)
    spec: dict[str, Any] = {
        "ociVersion": OCI_VERSION,
        "process": _process(options, user, caps),
        "root": {"path": str(options.rootfs), "readonly": options.read_only},
        "hostname": options.hostname or options.container_id[:12],
        "mounts": standard_mounts(options) + user_mounts(options),
        "linux": _linux(options, caps),
        "annotations": dict(options.annotations),
    }
    if not any(ns["type"] == "uts" for ns in spec["linux"]["namespaces"]):
        del spec["hostname"]  # the host's UTS namespace: runtimes refuse to set a hostname
    elif options.domainname:
        # a sysctl, as dockerd sets it: runc before 1.2 ignores the spec's "domainname"
        spec["linux"].setdefault("sysctl", {}).setdefault("kernel.domainname", options.domainname)
    return apply_patch(spec, options.spec_patch) if options.spec_patch else spec


def apply_patch(spec: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """``patch`` merged over ``spec``: nested dicts merge key by key, anything else
    (lists included) replaces; a ``None`` value deletes the key."""
    for key, value in patch.items():
        if value is None:
            spec.pop(key, None)
        elif isinstance(value, dict) and isinstance(spec.get(key), dict):
            apply_patch(spec[key], value)
        else:
            spec[key] = value
    return spec
