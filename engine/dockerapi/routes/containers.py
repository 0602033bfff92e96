"""Containers: create, start, stop, restart, kill, pause, unpause, wait, remove, rename,
inspect, list, logs, exec create, prune.

Every verb calls the ``ContainerService`` method the RPC handler of the same verb calls; the
docker shapes start from the RPC's own views (``engine.api.containers``) and are completed
and typed here.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Any

import attrs
import trio

from engine.actors.container import ContainerActor
from engine.actors.health import docker_healthcheck
from engine.actors.logs import LOG_OPTS
from engine.actors.state import ACTIVE, ContainerState
from engine.actors.verbs import MIN_MEMORY
from engine.api.container_views import WAIT_CONDITIONS, wait_condition
from engine.api.containers import inspect as engine_inspect
from engine.api.containers import list_filter, published_ports, summary
from engine.dockerapi import list_filters, messages
from engine.dockerapi.attach import (
    GONE,
    ConnectionInput,
    drive_start,
    handed_start,
    output_sender,
    wait_for_start,
)
from engine.dockerapi.server import DockerAPI, Router, json_line, json_response, no_content
from engine.dockerapi.shapes import (
    is_empty,
    parse_filters,
    parse_timestamp,
    refuse_unsupported,
    rfc3339_nano,
    stdcopy_frame,
    str_list,
    str_map,
)
from engine.errors import AlreadyExists, Conflict, EngineError, InvalidArgument, NotFound
from engine.httpserver import Hijacked, HijackResponse, Request, Response, StreamResponse, Write
from engine.humanize import parse_size
from engine.network import mac_address, static_ip
from engine.network.networks import DEFAULT_NETWORK
from engine.oci.spec import MASKED_PATHS, READONLY_PATHS
from engine.supervisor.attach import parse_detach_keys
from engine.supervisor.container_service import (
    AttachSpec,
    ContainerService,
    CreateSpec,
    ExecSpec,
    LogsSpec,
)
from engine.supervisor.containers import NAME_RE
from engine.supervisor.system import container_sizes
from engine.supervisor.volume_views import mounts_view

log = logging.getLogger("engine.dockerapi")

FAILED_START_REMOVE_WAIT = 30.0  # seconds


def register(router: Router) -> None:
    router.route("POST", "/containers/create")(create)
    router.route("GET", "/containers/json")(list_containers)
    router.route("POST", "/containers/prune")(prune)
    router.route("GET", "/containers/{id}/json")(inspect)
    router.route("POST", "/containers/{id}/start")(start)
    router.route("POST", "/containers/{id}/stop")(stop)
    router.route("POST", "/containers/{id}/restart")(restart)
    router.route("POST", "/containers/{id}/kill")(kill)
    router.route("POST", "/containers/{id}/pause")(pause)
    router.route("POST", "/containers/{id}/unpause")(unpause)
    router.route("POST", "/containers/{id}/wait")(wait)
    router.route("POST", "/containers/{id}/rename")(rename)
    router.route("GET", "/containers/{id}/logs")(logs)
    router.route("POST", "/containers/{id}/exec")(exec_create)
    router.route("DELETE", "/containers/{id}")(remove)
    router.route("POST", "/containers/{id}/attach")(attach)
    router.route("POST", "/containers/{id}/resize")(resize)


def service(api: DockerAPI) -> ContainerService:
    return ContainerService(api.app)


# --- create: docker's Config / HostConfig / NetworkingConfig → CreateSpec -------------------------

# Config fields the engine maps; ones it may ignore (client-side or informational); every
# other field must be left at its zero value, or the request is refused naming it.
CONFIG_HANDLED = {"Hostname", "User", "Env", "Cmd", "Image", "WorkingDir", "Entrypoint", "Labels",
                  "StopSignal", "StopTimeout", "NetworkDisabled", "HostConfig", "NetworkingConfig",
                  "Tty", "OpenStdin", "StdinOnce", "Healthcheck", "ExposedPorts", "Domainname",
                  "MacAddress"}
CONFIG_IGNORED = {"AttachStdin", "AttachStdout", "AttachStderr", "ArgsEscaped", "Shell", "OnBuild"}
HEALTH_HANDLED = {"Test", "Interval", "Timeout", "StartPeriod", "Retries"}
HEALTH_IGNORED = {"StartInterval"}
HOST_HANDLED = {"Binds", "PortBindings", "RestartPolicy", "AutoRemove", "NetworkMode", "Dns", "DnsSearch", "DnsOptions",
                "ExtraHosts", "CapAdd", "CapDrop", "PublishAllPorts", "ReadonlyRootfs", "Tmpfs", "Runtime",
                "Memory", "NanoCpus", "CpuShares", "CpusetCpus", "CpusetMems", "PidsLimit", "Init", "Mounts", "LogConfig", "CgroupnsMode", "IpcMode",
                "Isolation", "VolumesFrom", "Privileged", "SecurityOpt", "Sysctls", "Ulimits", "ShmSize",
                "OomScoreAdj", "GroupAdd", "PidMode", "UTSMode", "MemorySwap", "CpuQuota", "CpuPeriod", "Devices",
                "MemoryReservation", "OomKillDisable"}
HOST_IGNORED = {"ContainerIDFile", "ConsoleSize", "Links", "MemorySwappiness"}
LOG_DRIVERS = {"", "json-file", "k8s-file", "local", "none"}


def _restart_policy(doc: Any) -> str:
    if not doc:
        return "no"
    name = str(doc.get("Name") or "no")
    retries = int(doc.get("MaximumRetryCount") or 0)
    if name == "on-failure" and retries > 0:
        return f"on-failure:{retries}"
    return name


def _publish(bindings: Any) -> list[str]:
    """``{"80/tcp": [{"HostIp": "", "HostPort": "8080"}]}`` → ``["8080:80/tcp"]``."""
    specs: list[str] = []
    for key, entries in (bindings or {}).items():
        port, _, proto = str(key).partition("/")
        proto = proto or "tcp"
        for entry in entries or [{}]:
            ip = str((entry or {}).get("HostIp") or "")
            host_port = str((entry or {}).get("HostPort") or "")
            if ":" in ip:
                ip = f"[{ip}]"
            if ip:
                specs.append(f"{ip}:{host_port}:{port}/{proto}")
            elif host_port:
                specs.append(f"{host_port}:{port}/{proto}")
            else:
                specs.append(f"{port}/{proto}")
    return specs


def _csv_value(text: str) -> str:
    """A value in a ``--mount`` string: quoted when it has a comma (docker's csv)."""
    if '"' in text:
        raise InvalidArgument(f"invalid mount value {text!r}: double quotes are not supported")
    return f'"{text}"' if "," in text else text


def _volume_mount(i: int, m: dict[str, Any]) -> str:
    """HostConfig.Mounts[i] of type volume as a ``--mount`` value."""
    opts = m.get("VolumeOptions") or {}
    driver = opts.get("DriverConfig") or {} if isinstance(opts, dict) else None
    if not isinstance(opts, dict) or not isinstance(driver, dict):
        raise InvalidArgument(f"HostConfig.Mounts[{i}].VolumeOptions must be an object")
    refuse_unsupported(f"HostConfig.Mounts[{i}].VolumeOptions", opts, {"NoCopy", "Labels", "DriverConfig"},
                       set())
    parts = ["type=volume", f"dst={_csv_value(str(m.get('Target', '')))}"]
    if m.get("Source"):
        parts.append(f"src={_csv_value(str(m['Source']))}")
    if m.get("ReadOnly"):
        parts.append("readonly")
    if opts.get("NoCopy"):
        parts.append("volume-nocopy=true")
    for key, value in str_map(opts.get("Labels"), f"HostConfig.Mounts[{i}].VolumeOptions.Labels").items():
        parts.append(_csv_value(f"volume-label={key}={value}"))
    if driver.get("Name"):
        parts.append(f"volume-driver={_csv_value(str(driver['Name']))}")
    for key, value in str_map(driver.get("Options"), f"HostConfig.Mounts[{i}].VolumeOptions.DriverConfig").items():
        parts.append(_csv_value(f"volume-opt={key}={value}"))
    return ",".join(parts)


def _bind_propagation(i: int, m: dict[str, Any]) -> str:
    """HostConfig.Mounts[i].BindOptions.Propagation (checked where the -v value is parsed)."""
    options = m.get("BindOptions") or {}
    if not isinstance(options, dict):
        raise InvalidArgument(f"HostConfig.Mounts[{i}].BindOptions must be an object")
    return str(options.get("Propagation") or "")


def _mounts(mounts: Any) -> tuple[list[str], list[str], list[str]]:
    """HostConfig.Mounts as -v values (binds), --tmpfs values and --mount values (volumes)."""
    binds: list[str] = []
    tmpfs: list[str] = []
    volumes: list[str] = []
    if mounts is not None and not isinstance(mounts, list):
        raise InvalidArgument("HostConfig.Mounts must be a list of objects")
    for i, m in enumerate(mounts or []):
        if not isinstance(m, dict):
            raise InvalidArgument(f"HostConfig.Mounts[{i}] must be an object")
        kind = m.get("Type", "")
        target = m.get("Target", "")
        refuse_unsupported(f"HostConfig.Mounts[{i}]", m, {"Type", "Source", "Target", "ReadOnly",
                                                          "TmpfsOptions", "VolumeOptions"},
                           {"Consistency", "BindOptions"})
        if kind == "bind":
            options = ",".join(o for o in ("ro" if m.get("ReadOnly") else "", _bind_propagation(i, m)) if o)
            binds.append(f"{m.get('Source', '')}:{target}" + (f":{options}" if options else ""))
        elif kind == "tmpfs":
            # a --mount value: ReadOnly counts, and inspect tells it from a --tmpfs
            opts = m.get("TmpfsOptions") or {}
            parts = [f"type=tmpfs,dst={target}"]
            if m.get("ReadOnly"):
                parts.append("readonly")
            if opts.get("SizeBytes"):
                parts.append(f"tmpfs-size={int(opts['SizeBytes'])}")
            if opts.get("Mode"):
                parts.append(f"tmpfs-mode={int(opts['Mode']):o}")
            volumes.append(",".join(parts))
        elif kind == "volume":
            volumes.append(_volume_mount(i, m))
        else:
            raise InvalidArgument(f"HostConfig.Mounts[{i}].Type {kind!r} is not supported by engine "
                                  "(bind, volume and tmpfs are)")
    return binds, tmpfs, volumes


def _network(host: dict[str, Any], networking: dict[str, Any], disabled: bool) -> tuple[str, list[str]]:
    mode = str(host.get("NetworkMode") or "")
    if mode == "default":
        mode = ""
    endpoints = (networking or {}).get("EndpointsConfig") or {}
    if len(endpoints) > 1:
        raise InvalidArgument("NetworkingConfig.EndpointsConfig names several networks; a container is "
                              "created on one (connect it to others afterwards)")
    aliases: list[str] = []
    for name, endpoint in endpoints.items():
        endpoint = endpoint or {}
        refuse_unsupported(f"NetworkingConfig.EndpointsConfig.{name}", endpoint, {"Aliases", "IPAMConfig"},
                           {"NetworkID", "EndpointID", "Gateway", "IPAddress", "IPPrefixLen", "MacAddress",
                            "DNSNames", "Links"})
        if name == "default":
            # API 1.44+ clients (docker 25+) name the daemon's default network so when no
            # --network is given: the daemon's --default-network, as for NetworkMode "default"
            name = mode
        elif mode and mode != name:
            raise InvalidArgument(f"HostConfig.NetworkMode {mode!r} and NetworkingConfig's network {name!r} differ")
        mode = name
        aliases = str_list(endpoint.get("Aliases"), "Aliases") or []
    if disabled:
        mode = "none"
    return mode, aliases


def requested_ip(endpoint: dict[str, Any] | None, section: str) -> str:
    """An endpoint's IPAMConfig.IPv4Address (docker's --ip, compose's ipv4_address); ""
    for none. A malformed one is refused (400) in dockerd's words."""
    ipam = (endpoint or {}).get("IPAMConfig") or {}
    if not isinstance(ipam, dict):
        raise InvalidArgument(f"{section}.IPAMConfig must be an object")
    refuse_unsupported(f"{section}.IPAMConfig", ipam, {"IPv4Address"}, set())
    return static_ip.parse(str(ipam.get("IPv4Address") or ""))


def _network_mac(doc: dict[str, Any], networking: dict[str, Any]) -> str:
    """The create's MAC address on its one network: the endpoint's ``MacAddress`` (API
    1.44+ clients) or the container-wide ``Config.MacAddress`` (older ones); "" for none."""
    config_mac = doc.get("MacAddress") or ""
    endpoint_mac = ""
    for endpoint in ((networking or {}).get("EndpointsConfig") or {}).values():
        endpoint_mac = (endpoint or {}).get("MacAddress") or ""
    if not isinstance(config_mac, str) or not isinstance(endpoint_mac, str):
        raise InvalidArgument("MacAddress must be a string")
    if config_mac and endpoint_mac and mac_address.parse(config_mac) != mac_address.parse(endpoint_mac):
        # dockerd's words
        raise InvalidArgument("the container-wide MAC address must match the endpoint-specific MAC address "
                              "for the main network, or be left empty")
    return mac_address.parse(endpoint_mac or config_mac)


def _network_ip(networking: dict[str, Any]) -> str:
    """The create's address on its one network (``_network`` checked the endpoints)."""
    for name, endpoint in ((networking or {}).get("EndpointsConfig") or {}).items():
        return requested_ip(endpoint, f"NetworkingConfig.EndpointsConfig.{name}")
    return ""


def create_spec(doc: dict[str, Any], name: str, platform: str) -> CreateSpec:
    """docker's container create body as the engine's CreateSpec; a field the engine does
    not support is refused by name (400) rather than silently dropped."""
    host = doc.get("HostConfig") or {}
    networking = doc.get("NetworkingConfig") or {}
    if not isinstance(host, dict) or not isinstance(networking, dict):
        raise InvalidArgument("HostConfig and NetworkingConfig must be objects")
    refuse_unsupported("Config", doc, CONFIG_HANDLED, CONFIG_IGNORED | {"Volumes"})
    # Config.Volumes: {"/path": {}}, an anonymous volume each (unless a bind or mount covers it)
    anonymous = sorted(str_map_keys(doc.get("Volumes"), "Config.Volumes"))
    refuse_unsupported("HostConfig", host, HOST_HANDLED, HOST_IGNORED)
    parse_links(host.get("Links"))  # checked here, resolved by the create handler
    log_type = str((host.get("LogConfig") or {}).get("Type") or "")
    if log_type not in LOG_DRIVERS:
        raise InvalidArgument(f"HostConfig.LogConfig.Type {log_type!r} is not supported by engine (it keeps "
                              "logs in k8s-file format)")
    if str(host.get("CgroupnsMode") or "private") not in ("private", "host"):
        raise InvalidArgument(f"HostConfig.CgroupnsMode {host['CgroupnsMode']!r} is not supported")
    if str(host.get("IpcMode") or "private") not in ("private", "shareable", "none", "host"):
        raise InvalidArgument(f"HostConfig.IpcMode {host['IpcMode']!r} is not supported by engine (private, "
                              "shareable, none and host are)")
    if str(host.get("Isolation") or "default") != "default":
        raise InvalidArgument(f"HostConfig.Isolation {host['Isolation']!r} is not supported on linux")
    image = str(doc.get("Image") or "")
    if not image:
        raise InvalidArgument("Config.Image is required")
    mount_binds, mount_tmpfs, mount_volumes = _mounts(host.get("Mounts"))
    network, aliases = _network(host, networking, bool(doc.get("NetworkDisabled")))
    pids = host.get("PidsLimit")
    nano_cpus = int(host.get("NanoCpus") or 0)
    tmpfs = [f"{path}:{opts}" if opts else path for path, opts in str_map(host.get("Tmpfs"), "HostConfig.Tmpfs").items()]
    stop_timeout = doc.get("StopTimeout")
    return CreateSpec(
        image=image,
        name=name,
        cmd=str_list(doc.get("Cmd"), "Config.Cmd"),
        entrypoint=_entrypoint(doc.get("Entrypoint")),
        # `-e NAME` of a variable the client has not set arrives as "NAME": dockerd runs
        # the container without it (engine's own -e refuses the form)
        env=[e for e in str_list(doc.get("Env"), "Config.Env") or [] if "=" in e],
        workdir=str(doc.get("WorkingDir") or ""),
        user=str(doc.get("User") or ""),
        hostname=str(doc.get("Hostname") or ""),
        domainname=str(doc.get("Domainname") or ""),
        volumes=[*(str_list(host.get("Binds"), "HostConfig.Binds") or []), *mount_binds,
                 *_uncovered(anonymous, host, [*tmpfs, *mount_tmpfs])],
        mounts=mount_volumes,
        volumes_from=str_list(host.get("VolumesFrom"), "HostConfig.VolumesFrom") or [],
        tmpfs=[*tmpfs, *mount_tmpfs],
        read_only=bool(host.get("ReadonlyRootfs")),
        init=bool(host.get("Init")),
        memory=int(host.get("Memory") or 0) or None,
        cpus=nano_cpus / 1e9 if nano_cpus else None,
        cpu_shares=int(host.get("CpuShares") or 0) or None,
        cpuset_cpus=str(host.get("CpusetCpus") or ""),
        cpuset_mems=str(host.get("CpusetMems") or ""),
        pids_limit=int(pids) if pids and int(pids) > 0 else None,
        restart=_restart_policy(host.get("RestartPolicy")),
        auto_remove=bool(host.get("AutoRemove")),
        labels=str_map(doc.get("Labels"), "Config.Labels"),
        runtime=str(host.get("Runtime") or ""),
        stop_signal=str(doc.get("StopSignal") or ""),
        stop_timeout=int(stop_timeout) if stop_timeout is not None else None,
        network=network,
        network_aliases=aliases,
        ip=_network_ip(networking),
        mac_address=_network_mac(doc, networking),
        publish=_publish(host.get("PortBindings")),
        publish_all=bool(host.get("PublishAllPorts")),
        expose=_exposed_ports(doc.get("ExposedPorts")),
        dns=str_list(host.get("Dns"), "HostConfig.Dns") or [],
        dns_search=str_list(host.get("DnsSearch"), "HostConfig.DnsSearch") or [],
        dns_options=str_list(host.get("DnsOptions"), "HostConfig.DnsOptions") or [],
        add_hosts=str_list(host.get("ExtraHosts"), "HostConfig.ExtraHosts") or [],
        cap_add=str_list(host.get("CapAdd"), "HostConfig.CapAdd") or [],
        cap_drop=str_list(host.get("CapDrop"), "HostConfig.CapDrop") or [],
        platform=platform,
        tty=bool(doc.get("Tty")),
        open_stdin=bool(doc.get("OpenStdin")),
        stdin_once=bool(doc.get("StdinOnce")),
        **_healthcheck(doc.get("Healthcheck")),
        **_host_options(host),
        **_log_config(host.get("LogConfig")),
    )


def _exposed_ports(value: Any) -> list[str]:
    """``Config.ExposedPorts`` (``{"81/tcp": {}}``: the CLI's --expose and -p ports)."""
    if value is None:
        return []
    if not isinstance(value, dict):
        raise InvalidArgument('Config.ExposedPorts must be an object of "PORT/PROTOCOL": {} entries')
    return [str(key) for key in value]


def _log_config(value: Any) -> dict[str, Any]:
    """--log-driver (none, or the one file driver under docker's names) and the --log-opt
    values engine's file driver has (max-size, max-file, compress); dockerd's others (tag,
    labels, env: metadata for remote drivers) are dropped."""
    config = value if isinstance(value, dict) else {}
    opts = str_map(config.get("Config"), "HostConfig.LogConfig.Config")
    return {"log_driver": str(config.get("Type") or ""),
            "log_opts": {k: v for k, v in opts.items() if k in LOG_OPTS}}


def _entrypoint(value: Any) -> list[str] | None:
    """The docker CLI's ``--entrypoint ""`` sends ``[""]``: no entrypoint at all (the image's
    dropped, the command runs alone), as dockerd reads it; not a program named ""."""
    entrypoint = str_list(value, "Config.Entrypoint")
    return [] if entrypoint == [""] else entrypoint


def _int_field(host: dict[str, Any], key: str) -> int | None:
    """An integer HostConfig field; None when absent or zero (docker's "not set")."""
    value = host.get(key)
    if value is None or value == 0:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidArgument(f"HostConfig.{key} must be an integer")
    return value


def _host_options(host: dict[str, Any]) -> dict[str, Any]:
    """HostConfig's privileges, namespaces and limits as CreateSpec's host options (checked
    with docker's rules by engine.supervisor.host_options)."""
    spec: dict[str, Any] = {}
    if host.get("Privileged"):
        spec["privileged"] = True
    for key, name in (("SecurityOpt", "security_opt"), ("GroupAdd", "group_add")):
        values = str_list(host.get(key), f"HostConfig.{key}")
        if values:
            spec[name] = values
    sysctls = str_map(host.get("Sysctls"), "HostConfig.Sysctls")
    if sysctls:
        spec["sysctls"] = sysctls
    ulimits = host.get("Ulimits") or []
    if not isinstance(ulimits, list) or not all(isinstance(u, dict) for u in ulimits):
        raise InvalidArgument("HostConfig.Ulimits must be a list of objects")
    if ulimits:
        spec["ulimits"] = [f"{u.get('Name', '')}={int(u.get('Soft') or 0)}:{int(u.get('Hard') or 0)}"
                           for u in ulimits]
    for key, name in (("ShmSize", "shm_size"), ("OomScoreAdj", "oom_score_adj"), ("MemorySwap", "memory_swap"),
                      ("CpuQuota", "cpu_quota"), ("CpuPeriod", "cpu_period"), ("MemoryReservation", "memory_reservation")):
        value = _int_field(host, key)
        if value is not None:
            spec[name] = value
    for key, name in (("PidMode", "pid"), ("IpcMode", "ipc"), ("UTSMode", "uts")):
        if host.get(key):
            spec[name] = str(host[key])
    devices = host.get("Devices") or []
    if not isinstance(devices, list) or not all(isinstance(d, dict) for d in devices):
        raise InvalidArgument("HostConfig.Devices must be a list of objects")
    if devices:
        spec["devices"] = [_device(i, d) for i, d in enumerate(devices)]
    if host.get("OomKillDisable"):
        spec["oom_kill_disable"] = True
    return spec


def _device(i: int, d: dict[str, Any]) -> str:
    """HostConfig.Devices[i] as a --device value."""
    refuse_unsupported(f"HostConfig.Devices[{i}]", d, {"PathOnHost", "PathInContainer", "CgroupPermissions"},
                       set())
    host_path = str(d.get("PathOnHost") or "")
    return f"{host_path}:{d.get('PathInContainer') or host_path}:{d.get('CgroupPermissions') or 'rwm'}"


def str_map_keys(value: Any, field: str) -> list[str]:
    # not is_empty(): {"/path": {}} is all zero values, yet it names a path
    if value is None:
        return []
    if not isinstance(value, dict):
        raise InvalidArgument(f"{field} must be an object of paths")
    return [str(k) for k in value]


def _uncovered(paths: list[str], host: dict[str, Any], tmpfs: list[str]) -> list[str]:
    """Config.Volumes paths that no bind, mount or tmpfs of the create covers (docker: the
    explicit one wins), as anonymous ``-v DST`` values."""
    taken: set[str] = {t.split(":")[0] for t in tmpfs}
    for spec in str_list(host.get("Binds"), "HostConfig.Binds") or []:
        parts = spec.split(":")
        taken.add(parts[1] if len(parts) > 1 else parts[0])
    taken |= {str(m.get("Target", "")) for m in host.get("Mounts") or []}
    covered = {t.rstrip("/") or "/" for t in taken}
    return [p for p in paths if (p.rstrip("/") or "/") not in covered]


def _nanoseconds(value: Any, field: str) -> float | None:
    if not value:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise InvalidArgument(f"Config.Healthcheck.{field} must be a whole number of nanoseconds")
    return value / 1e9


def _healthcheck(doc: Any) -> dict[str, Any]:
    """docker's ``Config.Healthcheck`` as CreateSpec's health fields; the test is kept
    whole (``["CMD", args...]`` runs without a shell, as docker runs it)."""
    if not doc:
        return {}
    if not isinstance(doc, dict):
        raise InvalidArgument("Config.Healthcheck must be an object")
    refuse_unsupported("Config.Healthcheck", doc, HEALTH_HANDLED, HEALTH_IGNORED)
    spec: dict[str, Any] = {}
    test = str_list(doc.get("Test"), "Config.Healthcheck.Test") or []
    if test:
        kind, args = test[0], test[1:]
        if kind == "NONE":
            spec["no_healthcheck"] = True
        elif kind in ("CMD", "CMD-SHELL") and args:
            spec["health_test"] = [kind, " ".join(args)] if kind == "CMD-SHELL" else test
        else:
            raise InvalidArgument(f"invalid Config.Healthcheck.Test {test!r}: use [\"CMD\", args...], "
                                  "[\"CMD-SHELL\", command] or [\"NONE\"]")
    for key, name in (("Interval", "health_interval"), ("Timeout", "health_timeout"),
                      ("StartPeriod", "health_start_period")):
        seconds = _nanoseconds(doc.get(key), key)
        if seconds is not None:
            spec[name] = seconds
    if doc.get("Retries"):
        spec["health_retries"] = int(doc["Retries"])
    return spec


def parse_links(value: Any) -> list[tuple[str, str]]:
    """``HostConfig.Links`` (``CONTAINER[:ALIAS]``) as (container, alias) pairs."""
    links = []
    for link in str_list(value, "HostConfig.Links") or []:
        target, _, alias = link.partition(":")
        target, alias = target.strip("/"), alias.rpartition("/")[2] or target.strip("/")
        if not target or not alias:
            raise InvalidArgument(f"invalid HostConfig.Links entry {link!r}: expected CONTAINER[:ALIAS]")
        links.append((target, alias))
    return links


def link_hosts(api: DockerAPI, spec: CreateSpec, links: list[tuple[str, str]]) -> list[str]:
    """docker's legacy links off user networks, as /etc/hosts entries (``ALIAS:IP``): the
    linked container's address, on the network the new container joins when they share
    it. On a user network the embedded DNS answers the aliases instead (``create``)."""
    hosts = []
    for target, alias in links:
        try:
            linked = service(api).get(target)
        except NotFound as e:  # a 400, as dockerd's: a 404 would make the CLI pull the image
            raise InvalidArgument(f"could not get container for {target}: No such container: {target}") from e
        if linked.status.state not in ACTIVE:
            raise Conflict(f"Cannot link to a non running container: /{linked.name} AS /{spec.name or '?'}/{alias}")
        details = {name: d for name, d in (linked.status.network_details or {}).items()
                   if not name.startswith("_") and isinstance(d, dict) and d.get("IPAddress")}
        chosen = details.get(spec.network) or next(iter(details.values()), None)
        if chosen is not None:
            hosts.append(f"{alias}:{chosen['IPAddress']}")
    return hosts


async def _on_user_network(api: DockerAPI, spec: CreateSpec) -> bool:
    """Whether the new container joins a user-defined network (where docker serves its
    links through the embedded DNS, not /etc/hosts)."""
    network = api.app.services.network
    mode = spec.network or api.app.config.default_network
    if network is None or mode in ("", "default", DEFAULT_NETWORK, "none", "host") or ":" in mode:
        return False
    try:
        return (await network.store.get(mode)).name != DEFAULT_NETWORK
    except NotFound:
        return False  # the create says so in its own words


async def create(api: DockerAPI, req: Request) -> Response:
    doc = await req.json_object()
    spec = create_spec(doc, req.param("name"), req.param("platform"))
    if spec.name and not NAME_RE.match(spec.name):
        raise messages.invalid_name(spec.name)
    if spec.memory is not None and spec.memory < MIN_MEMORY:
        raise InvalidArgument("Minimum memory limit allowed is 6MB")
    links = parse_links((doc.get("HostConfig") or {}).get("Links"))
    dns_links: list[tuple[str, str]] = []
    if links and await _on_user_network(api, spec):
        # As dockerd: the alias names the target for this container alone, through its
        # embedded DNS, whatever the target's address is (or whether it exists yet).
        dns_links = links
    elif links:
        spec = attrs.evolve(spec, add_hosts=[*spec.add_hosts, *link_hosts(api, spec, links)])
    binds = str_list((doc.get("HostConfig") or {}).get("Binds"), "HostConfig.Binds") or []
    if binds:
        await trio.to_thread.run_sync(make_bind_sources, binds)
    try:
        actor = await service(api).create(spec)
        if dns_links and api.app.services.network is not None:
            await api.app.services.network.set_links(actor.id, dns_links)
    except AlreadyExists:
        try:
            holder = service(api).get(spec.name) if spec.name else None
        except NotFound:
            holder = None
        if holder is None:
            raise
        raise messages.name_in_use(spec.name, holder.id) from None
    except NotFound as e:
        if "missing_image" in e.details:
            # what the docker CLI and docker-py look for before they pull
            raise NotFound(f"No such image: {spec.image}", **e.details) from None
        # anything else missing (a network, a --volumes-from or container: network's
        # container) is not a 404: the CLI reads a 404 from create as a missing image, and
        # pulls it. dockerd's 400 (--volumes-from) or start's words (a network)
        if spec.network and not spec.network.startswith("container:") and await network_missing(api, spec.network):
            raise InvalidArgument(f"network {spec.network} not found", **e.details) from None
        raise InvalidArgument(str(e), **e.details) from None
    return json_response({"Id": actor.id, "Warnings": []}, 201)


def make_bind_sources(binds: list[str]) -> None:
    """dockerd makes a missing host directory of ``-v /host/dir:/dir`` (HostConfig.Binds;
    ``--mount type=bind`` it refuses, as engine does): root's, 0755, parents too. One it
    cannot make is left to the create's own check, which names it."""
    for bind in binds:
        source = bind.split(":", 1)[0]
        if source.startswith("/") and not os.path.lexists(source):
            with contextlib.suppress(OSError):
                os.makedirs(source, mode=0o755, exist_ok=True)


async def network_missing(api: DockerAPI, name: str) -> bool:
    svc = api.app.services.network
    if svc is None:
        return False
    try:
        await svc.store.get(name)
    except NotFound:
        return True
    return False


# --- views --------------------------------------------------------------------------------------


def _mounts_view(actor: ContainerActor) -> list[dict[str, Any]]:
    """Binds, volumes and tmpfs mounts: the RPC's inspect view (one shape for both APIs)."""
    return mounts_view(actor.config, actor.status)


def _endpoint(network_id: str = "", aliases: list[str] | None = None, ipv4_address: str = "") -> dict[str, Any]:
    ipam = {"IPv4Address": ipv4_address} if ipv4_address else None
    return {"IPAMConfig": ipam, "Links": None, "Aliases": aliases or None, "NetworkID": network_id,
            "EndpointID": "", "Gateway": "", "IPAddress": "", "IPPrefixLen": 0, "IPv6Gateway": "",
            "GlobalIPv6Address": "", "GlobalIPv6PrefixLen": 0, "MacAddress": "", "DriverOpts": None}


async def configured_networks(api: DockerAPI, actor: ContainerActor) -> dict[str, Any]:
    """The networks a container that is not running will join (docker lists them, without
    addresses; docker-compose reads them to decide what to connect)."""
    network = api.app.services.network
    if network is None or actor.status.state in (ContainerState.RUNNING, ContainerState.PAUSED):
        return {}
    found: dict[str, Any] = {}
    for member in await network.memberships(actor.config):
        found[member.network] = _endpoint(aliases=list(member.aliases), ipv4_address=member.ipv4_address)
    return found


def _without_default_network(api: DockerAPI, c: Any) -> bool:
    """A container on the daemon's default network when there is none (dockerd's
    ``"bridge": "none"``, engine's ``--default-network none``)."""
    return bool(c.network_defaulted and c.network_mode == "none"
                and (api.app.config.default_network == "none" or api.app.services.network is None))


def network_mode_view(c: Any) -> str:
    """HostConfig.NetworkMode as dockerd shows it: "default" when none was asked for."""
    return "default" if c.network_defaulted or not c.network_mode else c.network_mode


def _empty_endpoint() -> dict[str, Any]:
    return {"IPAMConfig": None, "Links": None, "Aliases": None, "NetworkID": "", "EndpointID": "",
            "Gateway": "", "IPAddress": "", "IPPrefixLen": 0, "IPv6Gateway": "", "GlobalIPv6Address": "",
            "GlobalIPv6PrefixLen": 0, "MacAddress": "", "DriverOpts": None}


def _networks_view(actor: ContainerActor, configured: dict[str, Any] | None = None) -> dict[str, Any]:
    networks: dict[str, Any] = dict(configured or {})
    c = actor.config
    joined = [n for n in actor.status.network_details or {} if not n.startswith("_")]  # "_…": engine's own
    if not joined and c.network_mode in ("none", "host"):
        # dockerd lists the endpoint of a namespace mode (none, host) too; the default
        # network without one is its bridge ("default" mode), an endpoint never joined
        name = "bridge" if c.network_defaulted and c.network_mode == "none" else c.network_mode
        networks.setdefault(name, _empty_endpoint())
    for name, details in (actor.status.network_details or {}).items():
        if name.startswith("_") or not isinstance(details, dict):
            continue
        networks[name] = {
            "IPAMConfig": details.get("IPAMConfig") or None,  # the address asked for (--ip)
            "Links": None,
            "Aliases": list(details.get("Aliases") or []) or None,
            "NetworkID": str(details.get("NetworkID") or ""),
            "EndpointID": "",
            "Gateway": str(details.get("Gateway") or ""),
            "IPAddress": str(details.get("IPAddress") or ""),
            "IPPrefixLen": int(details.get("IPPrefixLen") or 0),
            "IPv6Gateway": "",
            "GlobalIPv6Address": "",
            "GlobalIPv6PrefixLen": 0,
            "MacAddress": str(details.get("MacAddress") or ""),
            "DriverOpts": None,
        }
    return networks


def summary_ports(actor: ContainerActor) -> list[dict[str, Any]]:
    """dockerd's list's Ports: those of a running container only, an exposed port that is
    not published without IP and PublicPort (`ps` shows it as ``7000/tcp``)."""
    found: list[dict[str, Any]] = []
    for key, bindings in sorted(published_ports(actor).items()):
        port, _, protocol = key.partition("/")
        if not bindings:
            found.append({"PrivatePort": int(port), "Type": protocol})
        found.extend({"IP": b["HostIp"], "PrivatePort": int(port), "PublicPort": int(b["HostPort"]),
                      "Type": protocol} for b in bindings or [])
    return found


def container_summary(actor: ContainerActor) -> dict[str, Any]:
    doc = summary(actor)
    doc["Names"] = ["/" + actor.config.name]
    doc["Ports"] = summary_ports(actor)
    doc["SizeRw"] = 0
    doc["HostConfig"] = {"NetworkMode": network_mode_view(actor.config)}
    doc["NetworkSettings"] = {"Networks": _networks_view(actor)}
    doc["Mounts"] = _mounts_view(actor)
    return doc


# HostConfig fields as docker's zero values, so clients that index them find them: the
# defaults under the engine's own view (which fills the fields it has knobs for; create
# refuses the others by name).
HOST_CONFIG_ZEROS: dict[str, Any] = {
    "ContainerIDFile": "", "VolumeDriver": "", "VolumesFrom": None, "CgroupnsMode": "", "GroupAdd": None,
    "IpcMode": "", "Cgroup": "", "Links": None, "OomScoreAdj": 0, "PidMode": "", "SecurityOpt": None,
    "UTSMode": "", "UsernsMode": "", "ShmSize": 0, "Isolation": "", "CpuShares": 0, "CgroupParent": "",
    "BlkioWeight": 0, "BlkioWeightDevice": None, "BlkioDeviceReadBps": None, "BlkioDeviceWriteBps": None,
    "BlkioDeviceReadIOps": None, "BlkioDeviceWriteIOps": None, "CpuPeriod": 0, "CpuQuota": 0,
    "CpuRealtimePeriod": 0, "CpuRealtimeRuntime": 0, "CpusetCpus": "", "CpusetMems": "", "Devices": None,
    "DeviceCgroupRules": None, "DeviceRequests": None, "KernelMemory": 0, "KernelMemoryTCP": 0,
    "MemoryReservation": 0, "MemorySwap": 0, "MemorySwappiness": None, "OomKillDisable": False,
    "Ulimits": None, "CpuCount": 0, "CpuPercent": 0, "IOMaximumIOps": 0, "IOMaximumBandwidth": 0,
}
# NetworkSettings fields of IPv6 and sandbox details the engine does not keep (IPv4 only)
NETWORK_SETTINGS_ZEROS: dict[str, Any] = {
    "HairpinMode": False, "LinkLocalIPv6Address": "", "LinkLocalIPv6PrefixLen": 0,
    "SecondaryIPAddresses": None, "SecondaryIPv6Addresses": None, "EndpointID": "",
    "GlobalIPv6Address": "", "GlobalIPv6PrefixLen": 0, "IPv6Gateway": "",
}


def _tmpfs_host_mounts(c: Any) -> list[dict[str, Any]]:
    """HostConfig.Mounts of the ``--mount type=tmpfs`` ones, as the client sent them
    (docker omits the zero fields); the binds and volumes of --mount are not kept."""
    found: list[dict[str, Any]] = []
    for t in c.tmpfs:
        if not t.from_mount:
            continue
        entry: dict[str, Any] = {"Type": "tmpfs", "Target": t.destination}
        options: dict[str, Any] = {}
        for option in t.options.split(","):
            key, _, value = option.partition("=")
            if option == "ro":
                entry["ReadOnly"] = True
            elif key == "size" and value:
                options["SizeBytes"] = parse_size(value)
            elif key == "mode" and value:
                options["Mode"] = int(value, 8)
        if options:
            entry["TmpfsOptions"] = options
        found.append(entry)
    return found


def container_inspect(api: DockerAPI, actor: ContainerActor,
                      configured: dict[str, Any] | None = None) -> dict[str, Any]:
    doc = engine_inspect(actor, api.app.config.storage_driver)
    c = actor.config
    config = doc["Config"]
    config.update({
        "Domainname": c.domainname,
        "MacAddress": c.mac_address,  # --mac-address (API < 1.44's place for it)
        "AttachStdin": c.open_stdin,
        "AttachStdout": False,
        "AttachStderr": False,
        "ExposedPorts": (c.image_config or {}).get("ExposedPorts") or None,
        "Tty": c.tty,
        "OpenStdin": c.open_stdin,
        "StdinOnce": c.stdin_once,
        "Volumes": {v.destination: {} for v in c.volumes} or None,
        "OnBuild": None,
        "StopTimeout": int(c.stop_timeout) if c.stop_timeout != float("inf") else -1,
    })
    if c.healthcheck is not None:
        config["Healthcheck"] = docker_healthcheck(c.healthcheck)
    elif c.healthcheck_disabled is not None:
        config["Healthcheck"] = dict(c.healthcheck_disabled)
    if _without_default_network(api, c) and actor.status.started_at:
        # dockerd's for a container on its default network when it has none ("bridge":
        # "none"), once it has started; omitted otherwise, as dockerd omits it (omitempty)
        config["NetworkDisabled"] = True
    host = doc["HostConfig"]
    for key, zero in HOST_CONFIG_ZEROS.items():
        host.setdefault(key, zero)
    host.update({
        # conmon writes k8s-file, but clients decide by this name whether logs can be read
        # back through the API (docker-py's run() reads them only for json-file/journald):
        # it reads back as json-file's does
        "LogConfig": {"Type": c.log_driver if c.log_driver in ("none", "local") else "json-file",
                      "Config": dict(c.log_opts)},
        "NetworkMode": network_mode_view(c),
        "Dns": list(c.dns),
        "DnsSearch": list(c.dns_search),
        "DnsOptions": list(c.dns_options),
        "ExtraHosts": list(c.add_hosts) or None,
        "PublishAllPorts": c.publish_all,
        # what the engine's spec masks (nothing when privileged)
        "MaskedPaths": [] if c.privileged else list(MASKED_PATHS),
        "ReadonlyPaths": [] if c.privileged else list(READONLY_PATHS),
        "Memory": int(c.memory or 0),
        "PidsLimit": c.pids_limit,
        "ConsoleSize": [0, 0],
        "Tmpfs": host.get("Tmpfs") or None,
        "Mounts": _tmpfs_host_mounts(c) or None,
        # named volumes as docker lists them (NAME:DST[:ro]); anonymous ones are only Mounts
        "Binds": [*(host.get("Binds") or []),
                  *(f"{v.name}:{v.destination}{':ro' if v.read_only else ''}"
                    for v in c.volumes if not v.anonymous)] or None,
    })
    network = doc["NetworkSettings"]
    for key, zero in NETWORK_SETTINGS_ZEROS.items():
        network.setdefault(key, zero)
    networks = _networks_view(actor, configured)
    first: dict[str, Any] = next(iter(networks.values()), {})
    network.update({
        "Networks": networks,
        "Bridge": "",
        "SandboxID": "",
        "SandboxKey": "",
        "Gateway": first.get("Gateway", ""),
        "IPPrefixLen": first.get("IPPrefixLen", 0),
        "MacAddress": first.get("MacAddress", ""),
        "IPAddress": network.get("IPAddress") or first.get("IPAddress", ""),
    })
    doc.update({
        "Platform": "linux",
        "ResolvConfPath": "",
        "HostnamePath": "",
        "HostsPath": "",
        "MountLabel": "",
        "ProcessLabel": "",
        "AppArmorProfile": "",
        "ExecIDs": api.execs.for_container(actor.id) or None,
        "GraphDriver": {"Name": api.app.config.storage_driver, "Data": {}},
        "Mounts": _mounts_view(actor),
    })
    return doc


async def inspect(api: DockerAPI, req: Request) -> Response:
    actor = service(api).get(req.path_params["id"])
    doc = container_inspect(api, actor, await configured_networks(api, actor))
    await _show_links(api, actor, doc["NetworkSettings"]["Networks"])
    if req.bool_param("size"):  # docker inspect -s: measured only when asked
        doc["SizeRw"], doc["SizeRootFs"] = (await container_sizes(api.app, [actor]))[actor.id]
    return json_response(doc)


async def _show_links(api: DockerAPI, actor: ContainerActor, networks: dict[str, Any]) -> None:
    """``--link`` on a user network: dockerd lists the links as given (``TARGET[:ALIAS]``)
    in the endpoint of the network the container was created on."""
    network = api.app.services.network
    endpoint = networks.get(actor.config.network_mode)
    if network is None or not isinstance(endpoint, dict):
        return
    links = await network.links(actor.id)
    if links:
        endpoint["Links"] = [target if alias == target.lower() else f"{target}:{alias}" for target, alias in links]


async def list_containers(api: DockerAPI, req: Request) -> Response:
    filters, docker_only = list_filters.split_filters(parse_filters(req.param("filters")))
    match = list_filter(filters)
    limit = req.int_param("limit", -1) or -1
    show_all = req.bool_param("all") or limit > 0 or "status" in filters
    actors = [a for a in service(api).supervisor.all() if (show_all or a.status.state in ACTIVE) and match(a)]
    if docker_only:
        svc = service(api)
        docker_match = list_filters.docker_filter(docker_only, lambda ref: svc.get(ref).config.created)
        actors = [a for a in actors if docker_match(container_summary(a), a.config.created)]
    if limit > 0:
        actors = actors[:limit]
    found = [container_summary(a) for a in actors]
    if req.bool_param("size"):  # docker ps -s: measured only when asked (it walks the layers)
        sizes = await container_sizes(api.app, actors)
        for doc, actor in zip(found, actors, strict=True):
            doc["SizeRw"], doc["SizeRootFs"] = sizes[actor.id]
    return json_response(found)


# --- life cycle ---------------------------------------------------------------------------------


async def start(api: DockerAPI, req: Request) -> Response:
    body = await req.json()
    if body and not is_empty(body):
        raise InvalidArgument("a HostConfig given at start is not supported (docker dropped it in API 1.24); "
                              "give it at create")
    svc = service(api)
    actor = svc.get(req.path_params["id"])
    try:
        pending = api.pending_starts.claim(actor.id)
        if pending is not None:  # an attached connection starts it, with its streams
            await handed_start(pending)
        else:
            await svc.start(actor.id)
    except Conflict as e:
        if e.details.get("state") in ("running", "paused"):
            return no_content(304)
        await remove_after_failed_start(svc, actor)
        raise
    except EngineError as e:
        await remove_after_failed_start(svc, actor)
        raise messages.runtime_error(e) from None
    return no_content()


async def remove_after_failed_start(svc: ContainerService, actor: ContainerActor) -> None:
    """An AutoRemove container whose start failed is removed, as dockerd does (``docker run
    --rm`` waits for the removal before it reports the error)."""
    if not actor.config.auto_remove:
        return
    with trio.CancelScope(shield=True), trio.move_on_after(FAILED_START_REMOVE_WAIT):
        try:
            await svc.remove(actor.id, True)
        except NotFound:
            pass
        except EngineError as e:
            log.warning("container %s: removal after its failed start: %s", actor.name, e)


def _stop_timeout(req: Request) -> int | None:
    return req.int_param("t", None)


def _signal(req: Request) -> str:
    # `signal` on stop and restart arrived in API 1.42; older clients never send it
    return req.param("signal") if req.api_version >= (1, 42) else ""


async def stop(api: DockerAPI, req: Request) -> Response:
    result = await service(api).stop(req.path_params["id"], _stop_timeout(req), _signal(req))
    return no_content() if result.get("stopped", True) else no_content(304)


async def restart(api: DockerAPI, req: Request) -> Response:
    await service(api).restart(req.path_params["id"], _stop_timeout(req))
    return no_content()


async def kill(api: DockerAPI, req: Request) -> Response:
    svc = service(api)
    actor = svc.get(req.path_params["id"])
    if actor.status.state not in (ContainerState.RUNNING, ContainerState.PAUSED):
        raise messages.kill_not_running(req.path_params["id"], actor.id)
    await svc.kill(req.path_params["id"], req.param("signal") or "SIGKILL")
    return no_content()


async def pause(api: DockerAPI, req: Request) -> Response:
    svc = service(api)
    actor = svc.get(req.path_params["id"])
    if actor.status.state == ContainerState.PAUSED:
        raise messages.already_paused(actor.id)
    if actor.status.state != ContainerState.RUNNING:
        raise messages.not_running(actor.id)
    await svc.pause(req.path_params["id"])
    return no_content()


async def unpause(api: DockerAPI, req: Request) -> Response:
    svc = service(api)
    actor = svc.get(req.path_params["id"])
    if actor.status.state != ContainerState.PAUSED:
        raise messages.not_paused(actor.id)
    await svc.unpause(req.path_params["id"])
    return no_content()


async def rename(api: DockerAPI, req: Request) -> Response:
    name = req.param("name")
    if not name:
        raise InvalidArgument("name is required: the container's new name")
    svc = service(api)
    actor = svc.get(req.path_params["id"])
    if name.lstrip("/") == actor.name:
        raise InvalidArgument("Renaming a container with the same name as its current name")
    if not NAME_RE.match(name):
        raise InvalidArgument(f"Error when allocating new name: {messages.invalid_name('/' + name.lstrip('/'))}")
    try:
        await svc.rename(req.path_params["id"], name)
    except AlreadyExists as e:
        with contextlib.suppress(NotFound):
            raise messages.rename_name_in_use(name.lstrip("/"), svc.get(name).id) from None
        raise e
    return no_content()


async def remove(api: DockerAPI, req: Request) -> Response:
    if req.bool_param("link"):
        raise InvalidArgument("link=true: links are not supported by engine")
    svc = service(api)
    if not req.bool_param("force"):
        actor = svc.get(req.path_params["id"])
        if actor.status.state in (ContainerState.RUNNING, ContainerState.PAUSED):
            raise messages.remove_running(actor.id, actor.status.state.value)
    # v: its anonymous volumes too (docker rm -v), as the RPC's container.remove
    await svc.remove(req.path_params["id"], req.bool_param("force"), req.bool_param("v"))
    return no_content()


async def wait(api: DockerAPI, req: Request) -> StreamResponse:
    """``condition``: not-running (default), next-exit, removed. The headers go out at once
    (clients wait for them before they start the container)."""
    condition = req.param("condition") or "not-running"
    if condition not in WAIT_CONDITIONS:
        raise InvalidArgument(f"invalid condition {condition!r}: use not-running, next-exit or removed")
    svc = service(api)
    actor = svc.get(req.path_params["id"])

    async def produce(write: Write) -> None:
        result = await wait_condition(svc, actor.id, condition)
        await write(json_line({"StatusCode": int(result.get("StatusCode") or 0), "Error": None}))

    return StreamResponse(produce, eager_headers=True)


async def prune(api: DockerAPI, req: Request) -> Response:
    from engine.supervisor.system import container_filter

    # until: a time or a duration ago (the CLI sends `--filter until=24h` as it is); label, label!
    removed = await service(api).prune(container_filter(parse_filters(req.param("filters"))))
    return json_response({"ContainersDeleted": removed or None, "SpaceReclaimed": 0})


# --- logs ----------------------------------------------------------------------------------------


def log_content_type(req: Request) -> str:
    # API 1.42 named the multiplexed stream for what it is
    if req.api_version >= (1, 42):
        return "application/vnd.docker.multiplexed-stream"
    return "application/vnd.docker.raw-stream"


async def logs(api: DockerAPI, req: Request) -> StreamResponse:
    want = {name for name in ("stdout", "stderr") if req.bool_param(name)}
    if not want:
        raise InvalidArgument("Bad parameters: you must choose at least one stream (stdout or stderr)")
    tail_text = req.param("tail") or "all"
    tail = None
    if tail_text != "all":
        try:
            tail = int(tail_text)
        except ValueError:
            raise InvalidArgument(f"invalid tail {tail_text!r}: a number or all") from None
        tail = None if tail < 0 else tail
    until = parse_timestamp(req.param("until"), "until")
    since = parse_timestamp(req.param("since"), "since")
    spec = LogsSpec(id=req.path_params["id"], follow=req.bool_param("follow"), tail=tail,
                    since=since or None, until=until, timestamps=req.bool_param("timestamps"))
    svc = service(api)
    actor = svc.get(spec.id)  # 404 before the stream starts
    if (actor.config.log_driver or api.app.config.log_driver) == "none":
        raise InvalidArgument("configured logging driver does not support reading")

    async def produce(write: Write) -> None:
        async for record in svc.logs(spec):
            if record.stream not in want:
                continue
            data = record.text
            if spec.timestamps:
                data = rfc3339_nano(record.time).encode() + b" " + data
            await write(stdcopy_frame(record.stream, data))

    return StreamResponse(produce, content_type=log_content_type(req), eager_headers=True)


# --- exec create (start and inspect are in routes.execs) --------------------------------------------

EXEC_HANDLED = {"Cmd", "Env", "WorkingDir", "User", "Tty", "AttachStdin", "Privileged", "DetachKeys",
                "ConsoleSize"}
EXEC_IGNORED = {"AttachStdout", "AttachStderr", "Detach", "Container"}


async def exec_create(api: DockerAPI, req: Request) -> Response:
    doc = await req.json_object()
    refuse_unsupported("ExecConfig", doc, EXEC_HANDLED, EXEC_IGNORED)
    if doc.get("Privileged"):
        raise InvalidArgument("Privileged exec is not supported by engine")
    cmd = str_list(doc.get("Cmd"), "Cmd")
    if not cmd:
        raise InvalidArgument("Cmd is required: the command to run")
    detach_keys = str(doc.get("DetachKeys") or "")
    parse_detach_keys(detach_keys)
    actor = service(api).get(req.path_params["id"])
    if actor.status.state == ContainerState.PAUSED:
        raise Conflict(f"Container {actor.id} is paused, unpause the container before exec")
    if actor.status.state != ContainerState.RUNNING:
        raise messages.not_running(actor.id)
    spec = ExecSpec(id=actor.id, cmd=cmd, env=str_list(doc.get("Env"), "Env") or [],
                    workdir=str(doc.get("WorkingDir") or ""), user=str(doc.get("User") or ""),
                    stdin=bool(doc.get("AttachStdin")), tty=bool(doc.get("Tty")))
    instance = await api.execs.create(actor.id, spec, console_size(doc.get("ConsoleSize")))
    actor.emit("exec_create", execID=instance.id, command=" ".join(cmd))  # as dockerd
    return json_response({"Id": instance.id}, 201)


def console_size(value: Any) -> tuple[int, int] | None:
    """docker's ``ConsoleSize``: [rows, cols]; [0, 0] or null for none."""
    if not value:
        return None
    if (not isinstance(value, list) or len(value) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)):
        raise InvalidArgument("ConsoleSize must be [rows, columns]")
    return (value[0], value[1]) if any(value) else None


# --- attach, resize -------------------------------------------------------------------------------


async def attach(api: DockerAPI, req: Request) -> HijackResponse:
    """docker attach (and the attach ``docker run``/``start -a`` make before the start):
    ``stream`` for output from now on and the client's stdin, ``logs`` for what was written
    before; ``stdout``/``stderr`` choose the streams, ``stdin`` whether the client's input
    goes to the container. To a container that is not running, the connection waits for
    its start (``POST …/start`` hands it over: not a byte of the run is missed)."""
    svc = service(api)
    actor = svc.get(req.path_params["id"])
    stream, logs = req.bool_param("stream"), req.bool_param("logs")
    stdin = req.bool_param("stdin")
    streams = {name for name in ("stdout", "stderr") if req.bool_param(name)}
    detach_keys = req.param("detachKeys")
    parse_detach_keys(detach_keys)  # a bad value is a 400, before the connection is taken over
    if not stream and not logs:
        raise InvalidArgument("attach needs stream or logs (or both)")
    tty = actor.config.tty
    pending = None
    if stream and actor.status.state not in (ContainerState.RUNNING, ContainerState.PAUSED):
        pending = api.pending_starts.add(actor.id)

    def abandon() -> None:
        if pending is not None:
            api.pending_starts.discard(pending)

    async def replay_logs(send: Any) -> None:
        async for record in svc.logs(LogsSpec(id=actor.id)):
            await send(record.to_wire(False))

    async def talk(conn: Hijacked) -> None:
        send = output_sender(conn, tty=tty, streams=streams)
        input = ConnectionInput(conn, stdin=stdin and actor.config.open_stdin)
        try:
            if logs:
                await replay_logs(send)
            if not stream:
                return
            async with trio.open_nursery() as nursery:
                nursery.start_soon(input.read)
                if pending is not None and await wait_for_start(pending, actor):
                    await drive_start(pending, actor, lambda: svc.start(actor.id, send, input, detach_keys))
                elif actor.status.state in (ContainerState.RUNNING, ContainerState.PAUSED):
                    await svc.attach(AttachSpec(actor.id, stdin=stdin, detach_keys=detach_keys), send, input)
                nursery.cancel_scope.cancel()
        except* GONE:
            log.debug("attach to %s: the client went away", actor.name)
        except* EngineError as group:
            # the connection is raw bytes now: say it on the error stream and end (a failed
            # start is the start request's error: dockerd says it there only)
            for error in group.exceptions:
                if pending is not None and error is pending.error:
                    continue
                log.info("attach to %s ended: %s", actor.name, error)
                with trio.move_on_after(1):
                    await output_sender(conn, tty=tty, streams={"stderr"})(
                        {"stream": "stderr", "data": f"Error: {error}\n".encode()})
        finally:
            abandon()

    return HijackResponse(talk, content_type=log_content_type(req) if not tty else "application/vnd.docker.raw-stream",
                          abandon=abandon)


def window(req: Request) -> tuple[int, int]:
    rows, cols = req.int_param("h", 0), req.int_param("w", 0)
    return int(rows or 0), int(cols or 0)


async def resize(api: DockerAPI, req: Request) -> Response:
    rows, cols = window(req)
    await service(api).resize(req.path_params["id"], rows, cols)
    return Response(200, b"", content_type="text/plain; charset=utf-8")
