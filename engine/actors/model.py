"""A container on disk: immutable config (``config.json``) and mutable status (``state.json``).

Like podman's ContainerConfig / ContainerState: the config is written once at create (rename
rewrites it under the actor), the status after every transition, always atomically.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs

from engine.actors.health import HealthConfig, HealthState
from engine.actors.state import ContainerState
from engine.convert import disk
from engine.errors import RuntimeFailure, disk_full, no_space
from engine.store.atomic import write_bytes_atomic
from engine.store.rmtree import remove_tree


@attrs.define
class BindMount:
    source: str
    destination: str
    read_only: bool = False
    propagation: str = ""  # "" (the runtime's default, rprivate), rprivate, rslave or rshared


@attrs.define
class TmpfsMount:
    destination: str
    options: str = ""
    from_mount: bool = False  # docker's --mount type=tmpfs (HostConfig.Mounts), not --tmpfs


@attrs.define
class VolumeMount:
    """A volume a container mounts (``-v NAME:/path``, ``-v /path``, ``--mount
    type=volume``, the image's ``VOLUME``); engine.volumes keeps the volume itself."""

    name: str
    destination: str
    read_only: bool = False
    nocopy: bool = False  # don't seed a new, empty volume from the image's content there
    anonymous: bool = False  # made for this container: `rm -v` and `--rm` remove it


@attrs.frozen
class PortMapping:
    """A published port (``-p``); engine.network.ports parses them and hands them to CNI."""

    host_port: int
    container_port: int
    protocol: str = "tcp"  # tcp | udp | sctp
    host_ip: str = ""  # "" = every host address


@attrs.define
class ContainerConfig:
    id: str
    name: str
    image: str  # the reference the user gave
    image_id: str
    created: float
    runtime: str
    entrypoint: list[str] | None = None  # None: the image's
    cmd: list[str] | None = None  # None: the image's
    args: list[str] = attrs.field(factory=list)  # resolved argv
    env: list[str] = attrs.field(factory=list)  # resolved
    workdir: str = "/"
    user: str = ""
    hostname: str = ""
    domainname: str = ""  # the UTS domain name (docker's --domainname)
    binds: list[BindMount] = attrs.field(factory=list)
    tmpfs: list[TmpfsMount] = attrs.field(factory=list)
    read_only: bool = False
    init: bool = False
    memory: int | None = None
    cpus: float | None = None
    pids_limit: int | None = None
    restart_policy: str = "no"
    auto_remove: bool = False
    labels: dict[str, str] = attrs.field(factory=dict)
    stop_signal: str = "SIGTERM"
    stop_timeout: float = 10.0
    network_mode: str = "none"
    network_defaulted: bool = False  # no network was asked for: the daemon's default (docker's "default")
    networks: list[str] = attrs.field(factory=list)
    aliases: list[str] = attrs.field(factory=list)
    ipv4_address: str = ""  # on its first network (--ip); the others' are the network service's
    mac_address: str = ""  # on its first network (--mac-address), as ipv4_address
    ports: list[PortMapping] = attrs.field(factory=list)
    publish_all: bool = False
    dns: list[str] = attrs.field(factory=list)
    dns_search: list[str] = attrs.field(factory=list)
    dns_options: list[str] = attrs.field(factory=list)
    add_hosts: list[str] = attrs.field(factory=list)
    cap_add: list[str] = attrs.field(factory=list)
    cap_drop: list[str] = attrs.field(factory=list)
    layers: list[str] = attrs.field(factory=list)  # the image's diff_ids, bottom first
    image_config: dict[str, Any] = attrs.field(factory=dict)
    tty: bool = False  # a pseudo-terminal as the container's stdio (-t)
    open_stdin: bool = False  # stdin kept open for attached clients (-i)
    stdin_once: bool = False  # closed when the first attached client closes its stdin
    healthcheck: HealthConfig | None = None
    # docker's Healthcheck when the check is off (--no-healthcheck, or a NONE test): {"Test":
    # ["NONE"]} with the image's times; inspect shows it and commit records it
    healthcheck_disabled: dict[str, Any] | None = None
    # Set by the CRI (engine.cri) for pods' containers; empty for engctl's.
    namespaces: dict[str, str] = attrs.field(factory=dict)  # type -> path to join, or "host"
    cgroups_path: str = ""  # "" = /engine/<id>
    annotations: dict[str, str] = attrs.field(factory=dict)  # OCI annotations
    log_path: str = ""  # where the monitor writes the output; "" = ctr.log in the container's dir
    privileged: bool = False
    no_new_privileges: bool = False
    seccomp_profile: str = ""  # "" = the default profile, "unconfined", or a profile's path
    sysctls: dict[str, str] = attrs.field(factory=dict)
    # merged over the built OCI spec (engine.oci.spec.apply_patch): dicts merge, lists replace
    spec_patch: dict[str, Any] = attrs.field(factory=dict)
    additional_gids: list[int] = attrs.field(factory=list)
    volumes: list[VolumeMount] = attrs.field(factory=list)
    log_driver: str = ""  # "": the daemon's default (engine.actors.logs.LogPolicy)
    log_opts: dict[str, str] = attrs.field(factory=dict)
    # CPU weight and placement (docker's --cpu-shares, --cpuset-cpus, --cpuset-mems; the CRI's)
    cpu_shares: int | None = None
    cpuset_cpus: str = ""
    cpuset_mems: str = ""
    # docker's host options (engine.supervisor.host_options checks them at create)
    security_opt: list[str] = attrs.field(factory=list)  # as given, for inspect
    seccomp_json: str = ""  # a profile's content (docker's CLI sends the file's JSON)
    ulimits: dict[str, list[int]] = attrs.field(factory=dict)  # docker's name -> [soft, hard]
    shm_size: int | None = None  # bytes of /dev/shm; None: docker's 64 MiB
    oom_score_adj: int | None = None
    group_add: list[str] = attrs.field(factory=list)  # gids or group names of the image's /etc/group
    memory_swap: int | None = None  # memory + swap (docker's --memory-swap); -1 unlimited
    cpu_quota: int | None = None  # microseconds per period (docker's --cpu-quota)
    cpu_period: int | None = None  # microseconds (docker's --cpu-period)
    devices: list[str] = attrs.field(factory=list)  # HOST:CONTAINER:PERMISSIONS, checked at create
    memory_reservation: int | None = None  # bytes: the soft limit (docker's --memory-reservation)
    oom_kill_disable: bool = False

    @property
    def short_id(self) -> str:
        return self.id[:12]


@attrs.define
class ContainerStatus:
    state: ContainerState = ContainerState.CREATING
    pid: int = 0
    monitor_pid: int = 0
    exit_code: int = 0
    oom_killed: bool = False
    error: str = ""
    started_at: float = 0.0
    finished_at: float = 0.0
    restart_count: int = 0
    last_restart_reason: str = ""
    stopped_by_user: bool = False
    ip_address: str = ""
    network_details: dict[str, Any] = attrs.field(factory=dict)
    health: HealthState | None = None  # this run's, when the container has a check
    # the host directories of the volumes this run mounted: {source, destination, read_only}
    volume_mounts: list[dict[str, Any]] = attrs.field(factory=list)


def new_container_id() -> str:
    return secrets.token_hex(32)


class ContainerFiles:
    """The files of one container under ``<root>/containers/<id>``. Blocking methods."""

    def __init__(self, directory: Path, log_path: Path | None = None) -> None:
        self.dir = directory
        self._log_path = log_path  # a CRI container's log lives where kubelet said

    @property
    def config_path(self) -> Path:
        return self.dir / "config.json"

    @property
    def state_path(self) -> Path:
        return self.dir / "state.json"

    @property
    def log_path(self) -> Path:
        return self._log_path or self.dir / "ctr.log"

    def write_config(self, config: ContainerConfig) -> None:
        """Raises an engine error when the disk refuses (full: ``resource_exhausted``); the
        file keeps its old content then."""
        with _written(self.config_path):
            # Owner only: the config holds the container's environment (passwords, tokens).
            self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            # A --rm container is removed after any power loss anyway (docker does the same),
            # so only the others pay for the fsyncs.
            write_bytes_atomic(self.config_path, json.dumps(disk.unstructure(config)).encode(),
                               mode=0o600, durable=not config.auto_remove)

    def write_status(self, status: ContainerStatus) -> None:
        self.write_status_bytes(encode_status(status))

    def write_status_bytes(self, data: bytes) -> None:
        # Atomic but not fsynced: a daemon crash keeps every rename (the page cache
        # survives it), and after a power loss no container is running whatever the file
        # says: adoption finds the runtime empty and records the exit. One fsync per
        # transition would cost more than the rest of a container start.
        with _written(self.state_path):
            write_bytes_atomic(self.state_path, data, mode=0o600, durable=False)

    def read_config(self) -> ContainerConfig:
        return disk.structure(json.loads(self.config_path.read_bytes()), ContainerConfig)

    def read_status(self) -> ContainerStatus:
        try:
            return disk.structure(json.loads(self.state_path.read_bytes()), ContainerStatus)
        except FileNotFoundError:
            return ContainerStatus()


@contextlib.contextmanager
def _written(path: Path) -> Iterator[None]:
    """A container file that cannot be written is the host's trouble, not a bug in the
    actor: an engine error naming the file (a full disk: ``resource_exhausted``)."""
    try:
        yield
    except OSError as e:
        if no_space(e) is not None:
            raise disk_full(e, path) from None
        raise RuntimeFailure(f"cannot write {path}: {e.strerror or e}") from None


def encode_status(status: ContainerStatus) -> bytes:
    """The status as it goes to disk. Cheap: the actor takes this snapshot on the event loop
    and hands the bytes to a worker thread, so the loop may change the status meanwhile."""
    return json.dumps(disk.unstructure(status)).encode()


def primary_ip(network_details: dict[str, Any]) -> str:
    """The address ``inspect`` shows first: that of the lowest-numbered interface."""
    endpoints = [v for k, v in network_details.items() if not k.startswith("_") and isinstance(v, dict)]
    for ep in sorted(endpoints, key=lambda e: str(e.get("InterfaceName", ""))):
        if ep.get("IPAddress"):
            return str(ep["IPAddress"])
    return ""


def remove_dir(path: Path) -> None:
    """Delete a container's directory tree, at any depth and without following a symlink
    (blocking). Failures are an engine error naming the path (rm -f retries)."""
    try:
        remove_tree(path)
    except OSError as e:
        raise RuntimeFailure(f"cannot remove {path}: {e.strerror or e}; `rm -f` retries") from None


def now() -> float:
    return time.time()


def iso_time(ts: float) -> str:
    if not ts:
        return "0001-01-01T00:00:00Z"
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int((ts % 1) * 1e9):09d}Z"


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
