"""Undo the networking of containers that should not have any (after a daemon crash).

Given the ids of the containers that should keep their networking, everything else goes:
CNI attachments (DEL from the cached ADD, so the plugins remove their veths, NAT and port
rules and IPAM leases), namespace files, and IPAM leases that no attachment explains.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Collection
from pathlib import Path

import attrs
import trio

from engine.errors import EngineError
from engine.network import cni, isolation, netns
from engine.network.networks import AUX_OWNER, NetworkStore, delete_bridge


@attrs.define
class ReconcileReport:
    detached: list[str] = attrs.field(factory=list)  # "<container id>@<network name>"
    netns_removed: list[str] = attrs.field(factory=list)
    leases_released: list[str] = attrs.field(factory=list)  # "<network name>/<ip>"
    errors: list[str] = attrs.field(factory=list)


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _stray_leases(ipam_dir: Path, keep: Collection[str], known_networks: set[str]) -> list[Path]:
    """host-local lease files (``<dataDir>/<network>/<ip>`` holding "<id>\\r\\n<ifname>")."""
    stray = []
    try:
        net_dirs = [e for e in os.scandir(ipam_dir) if e.is_dir()]
    except FileNotFoundError:
        return []
    for net_dir in net_dirs:
        for entry in os.scandir(net_dir.path):
            if not _is_ip(entry.name):
                continue  # "lock", "last_reserved_ip.0": host-local's own bookkeeping
            owner = Path(entry.path).read_text().split("\n", 1)[0].strip()
            if owner == AUX_OWNER and net_dir.name in known_networks:
                continue  # an --aux-address, kept from containers (NetworkStore.reserve_aux)
            if owner not in keep or net_dir.name not in known_networks:
                stray.append(Path(entry.path))
    return stray


def _unlink(path: Path) -> None:
    path.unlink(missing_ok=True)


async def reconcile(
    store: NetworkStore, netns_dir: Path, keep: Collection[str], *,
    plugin_dir: Path = cni.CNI_PATH,
) -> ReconcileReport:
    report = ReconcileReport()
    keep = set(keep)
    for record in await cni.attachments(store):
        if record.container_id in keep:
            continue
        try:
            await cni.detach_record(store, record, plugin_dir=plugin_dir)
            report.detached.append(f"{record.container_id}@{record.network_name}")
        except EngineError as e:
            report.errors.append(str(e))
    for name in await netns.list_names(netns_dir):
        if name not in keep:
            await netns.delete(netns_dir, name)
            report.netns_removed.append(name)
    networks = await store.list()
    names = {n.name for n in networks}
    for lease in await trio.to_thread.run_sync(_stray_leases, store.ipam_dir, keep, names):
        await trio.to_thread.run_sync(_unlink, lease)
        report.leases_released.append(f"{lease.parent.name}/{lease.name}")
    in_use = {a.network_id for a in await cni.attachments(store)}
    for net in networks:
        if not net.is_pseudo and net.id not in in_use:
            await delete_bridge(net)
    await isolation.sync(store.settings.chains, [n for n in networks if n.id in in_use])
    return report
