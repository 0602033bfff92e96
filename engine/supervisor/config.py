"""The daemon's configuration: a JSON file (dockerd's key names where they exist) plus flags.

A single value given both ways: the flag wins. A list (hosts, insecure-registries,
ws-allowed-origins…) given both ways is refused, as dockerd refuses it ("specified both as a
flag and in the configuration file"): neither merging nor replacing would be what one of the
two places says. Unknown keys and wrong types are reported with the key's name.
``RELOADABLE`` keys take effect on SIGHUP; others need a restart (the reload says which).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import attrs

from engine.convert import ValidationError, describe_error, wire
from engine.errors import ConfigError
from engine.network.settings import (
    DEFAULT_BIP,
    DEFAULT_BRIDGE,
    DEFAULT_POOLS,
    NetworkSettings,
    parse_pool_flag,
    parse_settings,
)
from engine.rpc.transports import normalise_origin

DEFAULT_CONFIG = Path("/etc/engine/daemon.json")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
DEFAULT_RESOLV_CONF = "/etc/resolv.conf"


@attrs.define
class AddressPoolConfig:
    """One of dockerd's default-address-pools: subnets of ``size`` bits out of ``base``."""

    base: str
    size: int


def _default_pools() -> list[AddressPoolConfig]:
    return [AddressPoolConfig(base, size) for base, size in DEFAULT_POOLS]


@attrs.define
class DaemonConfig:
    root: str = "/var/lib/engine"
    run_root: str = "/run/engine"
    # certs.d (and, when given, the registry credentials); None: certs.d in /etc/engine and
    # the credentials under root, so daemons never share them by default
    config_dir: str | None = None
    hosts: list[str] = attrs.field(factory=list)
    # Where the Docker Engine API is served (engine.dockerapi); none unless asked for.
    docker_hosts: list[str] = attrs.field(factory=list)
    log_level: str = "info"
    default_runtime: str = "runc"
    default_network: str = "bridge"  # podman's containers.conf `netns`; "none" for no networking
    # This daemon's default bridge, its address and the user networks' pools: two daemons on
    # one host need their own (engine.network.settings).
    bridge: str = DEFAULT_BRIDGE
    bip: str = DEFAULT_BIP
    default_address_pools: list[AddressPoolConfig] = attrs.field(factory=_default_pools)
    # The resolv.conf containers take their nameservers and search domains from, and the
    # embedded DNS of user networks forwards to (kubelet's --resolv-conf).
    resolv_conf: str = DEFAULT_RESOLV_CONF
    storage_driver: str = "overlay"
    insecure_registries: list[str] = attrs.field(factory=list)
    registry_mirrors: list[str] = attrs.field(factory=list)
    max_concurrent_downloads: int = 3
    log_size_max: int = 16 * 1024 * 1024  # accepted for old config files, ignored: log-opts
    log_driver: str = "k8s-file"  # docker's log-driver (json-file and local name it too)
    log_opts: dict[str, str] = attrs.field(factory=dict)  # docker's log-opts (max-size...)
    runtime_timeout: float = 120.0  # seconds one runtime call (create, kill, delete...) may take
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_ca: str | None = None
    socket_group: str | None = None
    # Origins (scheme://host[:port]) whose web pages may open the WebSocket RPC; none by
    # default: a browser handshake carries an Origin, our clients send none.
    ws_allowed_origins: list[str] = attrs.field(factory=list)
    plugins: dict[str, dict[str, Any]] = attrs.field(factory=dict)
    # The Kubernetes CRI (engine.cri): off unless a socket is given. CNI as kubelet lays it
    # out: the lexically first config in cni_conf_dir; plugins searched in cni_bin_dirs.
    cri_socket: str = ""
    cni_conf_dir: str = "/etc/cni/net.d"
    cni_bin_dirs: list[str] = attrs.field(factory=lambda: ["/opt/cni/bin", "/usr/lib/cni"])
    # The pod sandbox's infra process: catatonit (no image) unless an image is named here
    cri_pause_image: str = ""
    # The CRI's streaming server (Exec/Attach/PortForward URLs), kubelet's
    # stream-server-address: HOST:PORT, loopback with an ephemeral port by default
    cri_streaming_address: str = "127.0.0.1:0"

    def to_plugin_dict(self) -> dict[str, Any]:
        """The plain dict every plugin hook receives as ``config``."""
        data = attrs.asdict(self)
        # dockerd spellings too, so plugins written against docker's names work.
        data["insecure-registries"] = self.insecure_registries
        data["registry-mirrors"] = mirrors_for_plugins(self.registry_mirrors)
        data["max-concurrent-downloads"] = self.max_concurrent_downloads
        data["default-address-pools"] = data["default_address_pools"]
        return data

    def network_settings(self) -> NetworkSettings:
        """The checked network settings (build_config has checked them already)."""
        return parse_settings(self.bridge, self.bip, [attrs.asdict(p) for p in self.default_address_pools])


def mirrors_for_plugins(entries: list[str]) -> list[str] | dict[str, list[str]]:
    """``--registry-mirror URL`` mirrors docker.io (dockerd's form); ``HOST=URL`` mirrors
    registry HOST (e.g. ``registry.k8s.io=http://127.0.0.1:5600``). With any ``HOST=URL``
    the registry plugins get the map form ``host -> [URLs]``."""
    if not any("=" in e for e in entries):
        return list(entries)
    mirrors: dict[str, list[str]] = {}
    for entry in entries:
        host, sep, url = entry.partition("=")
        if not sep:
            host, url = "docker.io", entry
        mirrors.setdefault(host.strip(), []).append(url.strip())
    return mirrors


RELOADABLE = ("log_level", "insecure_registries", "registry_mirrors", "max_concurrent_downloads",
              "default_runtime", "default_network", "ws_allowed_origins")


def _file_key_to_field(key: str) -> str:
    return key.replace("-", "_")


def load_config_file(path: Path, *, required: bool) -> dict[str, Any]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        if required:
            raise ConfigError(f"config file {path} does not exist") from None
        return {}
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"config file {path} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a JSON object")
    known = {f.name for f in attrs.fields(DaemonConfig)}
    fields: dict[str, Any] = {}
    for key, value in data.items():
        name = _file_key_to_field(key)
        if key == "data-root":
            name = "root"
        elif key == "exec-root":
            name = "run_root"
        if name not in known:
            raise ConfigError(f"unknown key {key!r} in {path}")
        fields[name] = value
    return fields


# The keys whose value is a list (their flags repeat); annotations are strings here.
LIST_FIELDS = frozenset(f.name for f in attrs.fields(DaemonConfig) if str(f.type).startswith("list["))


def _file_key(name: str) -> str:
    return name.replace("_", "-")


def check_list_conflicts(file_fields: dict[str, Any], flag_fields: dict[str, Any], source: str) -> None:
    """dockerd's rule for a list given in the file and as flags: a ConfigError naming each."""
    both = sorted(name for name in LIST_FIELDS
                  if name in file_fields and flag_fields.get(name) is not None)
    if not both:
        return
    shown = ", ".join(f"{_file_key(name)}: (from flag: {json.dumps(flag_fields[name], default=str)}, "
                      f"from file: {json.dumps(file_fields[name], default=str)})" for name in both)
    raise ConfigError(f"the following directives are specified both as a flag and in the configuration "
                      f"file {source}: {shown}; give each list in one place (a flag neither adds to "
                      "nor replaces the file's list)")


def build_config(file_fields: dict[str, Any], flag_fields: dict[str, Any], source: str) -> DaemonConfig:
    check_list_conflicts(file_fields, flag_fields, source)
    merged = {**file_fields, **{k: v for k, v in flag_fields.items() if v is not None}}
    try:
        config = wire.structure(merged, DaemonConfig)
    except ValidationError as e:
        problems = describe_error(e, path=source)
        raise ConfigError(f"invalid configuration: {problems}") from None
    if not 0 < config.runtime_timeout <= 3600:
        raise ConfigError(f"invalid runtime-timeout {config.runtime_timeout}: use seconds from 0 to 3600")
    if config.log_level not in LOG_LEVELS:
        raise ConfigError(f"invalid log-level {config.log_level!r}: use one of {', '.join(LOG_LEVELS)}")
    config.ws_allowed_origins = [_origin(o) for o in config.ws_allowed_origins]
    config.network_settings()  # a bad bridge, bip or pool is a ConfigError naming it
    _check_resolv_conf(config.resolv_conf)
    from engine.actors.logs import LogPolicy

    try:
        LogPolicy.parse(config.log_driver, config.log_opts)
    except Exception as e:
        raise ConfigError(f"invalid log-driver / log-opts: {e}") from None
    return config


def _check_resolv_conf(path: str) -> None:
    """A resolv-conf the user chose must exist: every user-network container would otherwise
    start with no upstream nameserver. The default may be missing (a host without DNS)."""
    if path == DEFAULT_RESOLV_CONF or Path(path).is_file():
        return
    raise ConfigError(f"resolv-conf {path} is not a file: give the resolv.conf whose nameservers containers "
                      "should use, or leave it unset for /etc/resolv.conf")


def _origin(text: str) -> str:
    if text.strip() == "*":
        raise ConfigError("ws-allowed-origins: '*' is not accepted; list each origin that may "
                          "use the RPC from a browser (e.g. http://localhost:8080)")
    try:
        return normalise_origin(text)
    except ValueError as e:
        raise ConfigError(f"invalid ws-allowed-origins entry: {e}") from None


def arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="engined", description="The engine container daemon.")
    p.add_argument("--config", type=Path, help=f"JSON config file (default {DEFAULT_CONFIG} if present)")
    p.add_argument("--root", help="persistent state (default /var/lib/engine)")
    p.add_argument("--run-root", dest="run_root", help="runtime state (default /run/engine)")
    p.add_argument("--config-dir", dest="config_dir", help="certs.d and registry credentials (default: certs.d in /etc/engine, credentials under --root)")
    p.add_argument("-H", "--host", dest="hosts", action="append", help="unix:///path, tcp://HOST:PORT, fd:// (repeatable)")
    p.add_argument("--docker-host", dest="docker_hosts", action="append",
                   help="serve the Docker Engine API on unix:///path, tcp://HOST:PORT or fd:// "
                        "(repeatable; off unless given)")
    p.add_argument("--log-level", dest="log_level", choices=LOG_LEVELS)
    p.add_argument("--default-runtime", dest="default_runtime")
    p.add_argument("--default-network", dest="default_network", help="network of containers run without --network (default bridge)")
    p.add_argument("--bridge", dest="bridge", help=f"the default network's bridge (default {DEFAULT_BRIDGE}); "
                   "each daemon on a host needs its own")
    p.add_argument("--bip", dest="bip", help=f"the default bridge's address and prefix (default {DEFAULT_BIP})")
    p.add_argument("--default-address-pool", "--default-address-pools", dest="default_address_pools",
                   action="append", metavar="base=SUBNET,size=N",
                   help="where user networks' subnets come from (repeatable; default "
                        f"base={DEFAULT_POOLS[0][0]},size={DEFAULT_POOLS[0][1]})")
    p.add_argument("--resolv-conf", dest="resolv_conf", metavar="PATH",
                   help="the resolv.conf whose nameservers and search domains containers use "
                        "(default /etc/resolv.conf)")
    p.add_argument("--storage-driver", dest="storage_driver")
    p.add_argument("--insecure-registry", dest="insecure_registries", action="append")
    p.add_argument("--registry-mirror", dest="registry_mirrors", action="append",
                   metavar="[HOST=]URL", help="a mirror of docker.io, or HOST=URL: a mirror of "
                   "registry HOST (repeatable)")
    p.add_argument("--max-concurrent-downloads", dest="max_concurrent_downloads", type=int)
    p.add_argument("--runtime-timeout", dest="runtime_timeout", type=float,
                   help="seconds one runtime call may take before it is reported stuck (default 120)")
    p.add_argument("--tlscert", dest="tls_cert")
    p.add_argument("--tlskey", dest="tls_key")
    p.add_argument("--tlscacert", dest="tls_ca")
    p.add_argument("--group", dest="socket_group", help="group owning the unix socket")
    p.add_argument("--ws-allowed-origin", dest="ws_allowed_origins", action="append",
                   metavar="ORIGIN", help="let web pages from ORIGIN (scheme://host[:port]) use "
                   "the tcp:// WebSocket RPC; none by default (repeatable)")
    p.add_argument("--cri-socket", dest="cri_socket", metavar="unix:///PATH",
                   help="serve the Kubernetes CRI (runtime.v1) on this unix socket (off unless given)")
    p.add_argument("--cni-conf-dir", dest="cni_conf_dir",
                   help="the CRI's CNI configuration directory (default /etc/cni/net.d)")
    p.add_argument("--cni-bin-dir", dest="cni_bin_dirs", action="append",
                   help="where the CRI finds CNI plugins (repeatable; default /opt/cni/bin, /usr/lib/cni)")
    p.add_argument("--cri-pause-image", dest="cri_pause_image",
                   help="image of pod sandboxes' infra container (default: catatonit, no image)")
    p.add_argument("--cri-streaming-address", dest="cri_streaming_address", metavar="HOST:PORT",
                   help="where the CRI serves exec/attach/port-forward streams (default "
                   "127.0.0.1:0, an ephemeral loopback port)")
    return p


def config_from_args(argv: list[str] | None = None) -> tuple[DaemonConfig, Path | None, dict[str, Any]]:
    """Parse flags and the file; returns the config, the file used and the flag values
    (kept so a SIGHUP reload can merge the re-read file with the same flags)."""
    args = arg_parser().parse_args(argv)
    flags = {k: v for k, v in vars(args).items() if k != "config" and v is not None}
    if "default_address_pools" in flags:
        flags["default_address_pools"] = [parse_pool_flag(text) for text in flags["default_address_pools"]]
    path: Path | None = args.config or (DEFAULT_CONFIG if DEFAULT_CONFIG.exists() else None)
    file_fields = load_config_file(path, required=args.config is not None) if path else {}
    return build_config(file_fields, flags, str(path or "flags")), path, flags
