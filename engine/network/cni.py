"""Attaching network namespaces to networks by running the standard CNI plugins.

Per the CNI spec (1.0.0): each plugin of the network's conflist runs with CNI_COMMAND,
CNI_CONTAINERID, CNI_NETNS, CNI_IFNAME and CNI_PATH in its environment and its config on
stdin; ADD runs the plugins in order, each receiving the previous one's result as
``prevResult``; DEL runs them in reverse with the cached ADD result as ``prevResult``.
Runtime arguments (port mappings) reach the plugins that declare the capability through
``runtimeConfig``.

Like libcni's cache, every attachment is recorded under the network store before ADD runs
(so a crash mid-ADD can still be undone) and completed with the ADD result after; DEL uses
that record, so it gets the same arguments after a daemon restart.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shlex
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import trio

from engine.actors.model import PortMapping
from engine.convert import disk
from engine.errors import EngineError, InvalidArgument, NotFound, RuntimeFailure
from engine.network import isolation, netns
from engine.network._proc import run
from engine.network.networks import CNI_VERSION, Network, NetworkStore, delete_bridge
from engine.network.ports import to_cni
from engine.store.atomic import read_json, write_json_atomic

CNI_PATH = Path("/usr/lib/cni")
PLUGIN_TIMEOUT = 30.0
# CNI error codes that mean the request (config, arguments) was wrong, not the host.
_CALLER_ERRORS = {2, 4, 6, 7}
_HOST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@attrs.frozen
class Attachment:
    """One namespace's interface on one network: the cache record of a CNI ADD."""

    container_id: str
    ifname: str
    network_id: str
    network_name: str
    netns: str
    config: dict[str, Any]  # the conflist ADD ran with (DEL must use the same)
    port_mappings: list[dict[str, Any]] = attrs.field(factory=list)
    name: str = ""
    aliases: list[str] = attrs.field(factory=list)
    etc_dir: str = ""  # the container's generated /etc files (engine.network.etc_files)
    result: dict[str, Any] | None = None  # None while ADD is in flight (or crashed)

    @property
    def ip(self) -> str:
        return _first_ip(self.result)[0] if self.result else ""


@attrs.frozen
class AttachResult:
    network: str
    network_id: str
    container_id: str
    ifname: str
    ip: str
    prefix_len: int
    mac: str
    gateway: str
    bridge: str
    port_mappings: list[PortMapping]
    aliases: list[str]
    cni_result: dict[str, Any]


def _record_path(store: NetworkStore, network_id: str, container_id: str, ifname: str) -> Path:
    return store.attachments_dir / network_id / f"{container_id}.{ifname}.json"


def _first_ip(result: Mapping[str, Any] | None) -> tuple[str, int, str]:
    """(address, prefix length, gateway) of the result's first IPv4 address."""
    for entry in (result or {}).get("ips", []):
        addr, _, prefix = entry.get("address", "").partition("/")
        if addr and ":" not in addr:
            return addr, int(prefix or 32), entry.get("gateway", "")
    return "", 0, ""


def _mac_of(result: Mapping[str, Any], ifname: str) -> str:
    for iface in result.get("interfaces", []):
        if iface.get("name") == ifname and iface.get("sandbox"):
            return str(iface.get("mac", ""))
    return ""


# --- running one plugin --------------------------------------------------------------------


def _plugin_config(
    conflist: Mapping[str, Any], plugin: Mapping[str, Any], runtime: Mapping[str, Any],
    prev_result: Mapping[str, Any] | None,
) -> dict[str, Any]:
    conf = copy.deepcopy(dict(plugin))
    conf["name"] = conflist["name"]
    conf["cniVersion"] = conflist["cniVersion"]
    wanted = {k for k, on in plugin.get("capabilities", {}).items() if on}
    runtime_config = {k: v for k, v in runtime.items() if k in wanted}
    if runtime_config:
        conf["runtimeConfig"] = runtime_config
    if prev_result is not None:
        conf["prevResult"] = prev_result
    return conf


def _plugin_error(plugin: str, command: str, stdout: bytes, stderr: bytes, rc: int) -> EngineError:
    try:
        err = json.loads(stdout)
        code, msg, details = int(err.get("code", 0)), str(err.get("msg", "")), str(err.get("details", ""))
    except (ValueError, AttributeError, TypeError):
        code, msg, details = 0, stdout.decode(errors="replace").strip(), ""
    text = f"CNI plugin {plugin} {command} failed (exit {rc}, code {code}): {msg}"
    if details:
        text += f" ({details})"
    if stderr.strip():
        text += f"; stderr: {stderr.decode(errors='replace').strip()[:500]}"
    cls = InvalidArgument if code in _CALLER_ERRORS else RuntimeFailure
    return cls(text, plugin=plugin, cni_code=code)


async def exec_plugin(
    plugin_dir: Path, command: str, config: Mapping[str, Any], *, container_id: str,
    netns: str, ifname: str, time_limit: float = PLUGIN_TIMEOUT,
) -> dict[str, Any]:
    """Run one CNI plugin (``config["type"]``) and return its parsed result (``{}`` if none)."""
    plugin_type = str(config["type"])
    binary = plugin_dir / plugin_type
    if not await trio.to_thread.run_sync(binary.exists):
        raise InvalidArgument(
            f"CNI plugin {plugin_type!r} not found in {plugin_dir}; install "
            "containernetworking-plugins or fix the plugin directory"
        )
    env = {
        "CNI_COMMAND": command, "CNI_CONTAINERID": container_id, "CNI_NETNS": netns,
        "CNI_IFNAME": ifname, "CNI_PATH": str(plugin_dir),
        # The plugins run iptables, ip and friends themselves.
        "PATH": os.environ.get("PATH", _HOST_PATH),
    }
    proc = await run([str(binary)], stdin=json.dumps(config).encode(), env=env,
                     time_limit=time_limit, check=False)
    if proc.returncode != 0:
        raise _plugin_error(plugin_type, command, proc.stdout, proc.stderr, proc.returncode)
    out = proc.stdout.strip()
    return json.loads(out) if out else {}


async def setup_loopback(netns_path: Path, *, plugin_dir: Path = CNI_PATH) -> None:
    """Bring ``lo`` up in the namespace (every container gets it, even ``--network none``)."""
    config = {"cniVersion": CNI_VERSION, "name": "loopback", "type": "loopback"}
    await exec_plugin(plugin_dir, "ADD", config, container_id="loopback",
                      netns=str(netns_path), ifname="lo")


# --- ADD / DEL over a conflist -------------------------------------------------------------


async def _add_list(
    plugin_dir: Path, conflist: Mapping[str, Any], runtime: Mapping[str, Any], *,
    container_id: str, netns: str, ifname: str,
) -> dict[str, Any]:
    result: dict[str, Any] | None = None
    for plugin in conflist["plugins"]:
        conf = _plugin_config(conflist, plugin, runtime, result)
        result = await exec_plugin(plugin_dir, "ADD", conf, container_id=container_id,
                                   netns=netns, ifname=ifname)
    return result or {}


async def _del_list(
    plugin_dir: Path, conflist: Mapping[str, Any], runtime: Mapping[str, Any],
    prev_result: Mapping[str, Any] | None, *, container_id: str, netns: str, ifname: str,
) -> list[EngineError]:
    """DEL every plugin in reverse order; keep going past failures and return them."""
    errors: list[EngineError] = []
    for plugin in reversed(conflist["plugins"]):
        conf = _plugin_config(conflist, plugin, runtime, prev_result)
        try:
            await exec_plugin(plugin_dir, "DEL", conf, container_id=container_id,
                              netns=netns, ifname=ifname)
        except EngineError as e:
            errors.append(e)
    return errors


def _masq_chain(network_name: str, container_id: str) -> str:
    # The bridge plugin's utils.FormatChainName: "CNI-" + sha512(name+id) hex, 28 chars.
    return "CNI-" + hashlib.sha512((network_name + container_id).encode()).hexdigest()[:24]


async def _sweep_masquerade(network_name: str, container_id: str) -> None:
    """Drop the bridge plugin's per-container NAT chain if DEL left it.

    The bridge plugin only tears its masquerade chain down when the namespace still exists
    (it learns the addresses from the interface), so after a crash or a lost namespace the
    chain would stay forever."""
    chain = _masq_chain(network_name, container_id)
    ipt = ["iptables", "-w", "5", "-t", "nat"]
    proc = await run([*ipt, "-S", "POSTROUTING"], check=False)
    for line in proc.stdout.decode().splitlines():
        words = shlex.split(line)  # iptables -S quotes comments the way a shell would
        if words[:2] == ["-A", "POSTROUTING"] and words[-2:] == ["-j", chain]:
            await run([*ipt, "-D", "POSTROUTING", *words[2:]], check=False)
    if (await run([*ipt, "-n", "-L", chain], check=False)).returncode == 0:
        await run([*ipt, "-F", chain], check=False)
        await run([*ipt, "-X", chain], check=False)


# --- records -------------------------------------------------------------------------------


def _write_record(store: NetworkStore, att: Attachment) -> None:
    path = _record_path(store, att.network_id, att.container_id, att.ifname)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, disk.unstructure(att), mode=0o600)


def _read_record(path: Path) -> Attachment | None:
    try:
        return disk.structure(read_json(path), Attachment)
    except FileNotFoundError:
        return None


def _list_records(store: NetworkStore) -> list[Attachment]:
    found = []
    try:
        net_dirs = list(os.scandir(store.attachments_dir))
    except FileNotFoundError:
        return []
    for net_dir in net_dirs:
        for entry in os.scandir(net_dir.path):
            if entry.name.endswith(".json") and not entry.name.startswith("."):
                att = _read_record(Path(entry.path))
                if att is not None:
                    found.append(att)
    return sorted(found, key=lambda a: (a.network_name, a.container_id, a.ifname))


async def attachments(store: NetworkStore, network: Network | None = None) -> list[Attachment]:
    """Cached attachments, all or of one network (complete ones and interrupted ADDs)."""
    records = await trio.to_thread.run_sync(_list_records, store)
    if network is not None:
        records = [a for a in records if a.network_id == network.id]
    return records


def _net_lock(store: NetworkStore, network_id: str) -> trio.Lock:
    # Serialises ADD against "last one out removes the bridge" on one network.
    locks: dict[str, trio.Lock] = store.__dict__.setdefault("_net_locks", {})
    return locks.setdefault(network_id, trio.Lock())


async def _sync_isolation(store: NetworkStore) -> None:
    in_use = {a.network_id for a in await attachments(store)}
    nets = [n for n in await store.list() if n.id in in_use]
    await isolation.sync(store.settings.chains, nets)


# --- the public operations -----------------------------------------------------------------


async def attach(
    store: NetworkStore,
    network: Network,
    container_id: str,
    netns_path: Path,
    *,
    ifname: str = "eth0",
    port_mappings: Sequence[PortMapping] = (),
    name: str = "",
    aliases: Iterable[str] = (),
    etc_dir: Path | None = None,
    plugin_dir: Path = CNI_PATH,
    ip: str = "",
    mac: str = "",
) -> AttachResult:
    """Connect the namespace at ``netns_path`` to ``network`` as ``ifname``.

    ``name`` and ``aliases`` are how other containers on the network find this one (through
    their /etc/hosts, see etc_files.refresh_network). ``ip`` is the address the container
    asked for (``--ip``; "" lets host-local choose), ``mac`` its interface's MAC
    address (``--mac-address``; "" lets the bridge plugin choose). On failure everything ADD did is
    undone and the plugin's message is raised (InvalidArgument or RuntimeFailure)."""
    if network.is_pseudo:
        raise InvalidArgument(
            f"network {network.name!r} is not attachable: 'host' shares the host's namespace "
            "and 'none' only gets loopback (use setup_loopback)"
        )
    await trio.to_thread.run_sync(netns.require_exists, netns_path)
    path = _record_path(store, network.id, container_id, ifname)
    if await trio.to_thread.run_sync(path.exists):
        raise InvalidArgument(
            f"container {container_id[:12]} is attached to network {network.name!r} as "
            f"{ifname} already; detach it first"
        )
    conflist = store.conflist(network, whole_subnet=bool(ip))
    runtime: dict[str, Any] = {"portMappings": [to_cni(p) for p in port_mappings]}
    if mac:
        runtime["mac"] = mac  # the "mac" capability (CNI conventions), the bridge plugin's
    if ip:
        # the "ips" capability (CNI conventions): host-local reserves exactly these
        runtime["ips"] = [f"{ip}/{network.subnet.partition('/')[2]}"]
    record = Attachment(
        container_id=container_id, ifname=ifname, network_id=network.id,
        network_name=network.name, netns=str(netns_path), config=conflist,
        port_mappings=runtime["portMappings"], name=name,
        aliases=sorted(set(aliases) - {""}), etc_dir=str(etc_dir or ""),
    )
    await setup_loopback(netns_path, plugin_dir=plugin_dir)
    async with _net_lock(store, network.id):
        # Recorded before ADD: a crash from here on leaves something reconcile can undo.
        await trio.to_thread.run_sync(_write_record, store, record)
        # --aux-address leases again, should anything have removed the network's lease dir
        await trio.to_thread.run_sync(store.reserve_aux, network)
        try:
            result = await _add_list(plugin_dir, conflist, runtime, container_id=container_id,
                                     netns=str(netns_path), ifname=ifname)
            record = attrs.evolve(record, result=result)
            await trio.to_thread.run_sync(_write_record, store, record)
            await _sync_isolation(store)
        except BaseException:
            with trio.CancelScope(shield=True):
                await _undo(store, network, record, plugin_dir)
            raise
    ip, prefix, gateway = _first_ip(result)
    return AttachResult(
        network=network.name, network_id=network.id, container_id=container_id,
        ifname=ifname, ip=ip, prefix_len=prefix, mac=_mac_of(result, ifname),
        gateway=gateway, bridge=network.bridge, port_mappings=list(port_mappings),
        aliases=record.aliases, cni_result=result,
    )


async def _undo(store: NetworkStore, network: Network, record: Attachment, plugin_dir: Path) -> None:
    await _del_list(plugin_dir, record.config, {"portMappings": record.port_mappings},
                    record.result, container_id=record.container_id,
                    netns=record.netns, ifname=record.ifname)
    await _sweep_masquerade(record.network_name, record.container_id)
    path = _record_path(store, network.id, record.container_id, record.ifname)
    await trio.to_thread.run_sync(lambda: path.unlink(missing_ok=True))
    await _after_detach(store, network)


async def _after_detach(store: NetworkStore, network: Network) -> None:
    if not await store.attached_containers(network):
        await delete_bridge(network)
    await _sync_isolation(store)


async def detach_record(
    store: NetworkStore, record: Attachment, *, plugin_dir: Path = CNI_PATH
) -> None:
    """DEL one cached attachment. The namespace may be gone already: DEL tolerates that."""
    netns = record.netns if await trio.to_thread.run_sync(os.path.exists, record.netns) else ""
    network = Network(name=record.network_name, id=record.network_id,
                      bridge=record.config["plugins"][0].get("bridge", ""))
    async with _net_lock(store, record.network_id):
        errors = await _del_list(
            plugin_dir, record.config, {"portMappings": record.port_mappings}, record.result,
            container_id=record.container_id, netns=netns, ifname=record.ifname,
        )
        await _sweep_masquerade(record.network_name, record.container_id)
        if errors:
            # Keep the record so a retry (or reconcile) can finish the job.
            raise RuntimeFailure(
                f"detaching {record.container_id[:12]} from network {record.network_name!r} "
                f"failed: {'; '.join(str(e) for e in errors)}; retry, or restart the daemon to reconcile"
            )
        path = _record_path(store, record.network_id, record.container_id, record.ifname)
        await trio.to_thread.run_sync(lambda: path.unlink(missing_ok=True))
        await _after_detach(store, network)


async def detach(
    store: NetworkStore, network: Network, container_id: str, *, ifname: str = "eth0",
    plugin_dir: Path = CNI_PATH,
) -> None:
    """Disconnect a container from ``network`` (idempotent: not attached is not an error).

    Call it before deleting the namespace: the bridge plugin needs the namespace to find
    the addresses it masqueraded (a lost namespace is cleaned up anyway)."""
    path = _record_path(store, network.id, container_id, ifname)
    record = await trio.to_thread.run_sync(_read_record, path)
    if record is None:
        return
    await detach_record(store, record, plugin_dir=plugin_dir)


async def detach_all(store: NetworkStore, container_id: str, *, plugin_dir: Path = CNI_PATH) -> None:
    """Disconnect a container from every network it is on."""
    for record in await attachments(store):
        if record.container_id == container_id:
            await detach_record(store, record, plugin_dir=plugin_dir)


async def rename(store: NetworkStore, container_id: str, new_name: str) -> list[str]:
    """Give every attachment record of the container its new name (peers find it by the
    record's name); the ids of the networks whose records changed."""
    def _rename() -> list[str]:
        changed = []
        for record in _list_records(store):
            if record.container_id == container_id and record.name != new_name:
                _write_record(store, attrs.evolve(record, name=new_name))
                changed.append(record.network_id)
        return list(dict.fromkeys(changed))

    return await trio.to_thread.run_sync(_rename)


async def get_attachment(store: NetworkStore, network: Network, container_id: str,
                         ifname: str = "eth0") -> Attachment:
    path = _record_path(store, network.id, container_id, ifname)
    record = await trio.to_thread.run_sync(_read_record, path)
    if record is None:
        raise NotFound(f"container {container_id[:12]} is not attached to network {network.name!r}")
    return record
