"""CNI for pod sandboxes, laid out as kubelet expects: the lexically first network
configuration in the configuration directory (``.conflist``, or a single-plugin ``.conf``
/ ``.json``), plugins found in the first plugin directory that has them all.

The engine's own CNI runner (``engine.network.cni``) executes the plugins; this module only
finds the configuration and the plugins, and hands port mappings (hostPort) to plugins that
declare the ``portMappings`` capability (portmap).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import attrs
import trio

from engine.errors import EngineError, Unavailable
from engine.network import cni as engine_cni

CONFIG_SUFFIXES = (".conflist", ".conf", ".json")


@attrs.frozen
class CNISettings:
    conf_dir: Path
    bin_dirs: tuple[Path, ...]


def load_conflist(conf_dir: Path) -> dict[str, Any]:
    """The network configuration kubelet would use (blocking). Unavailable when none is
    usable, naming the directory: the node's network is not ready."""
    try:
        names = sorted(p for p in conf_dir.iterdir() if p.suffix in CONFIG_SUFFIXES and p.is_file())
    except FileNotFoundError:
        names = []
    for path in names:
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # kubelet skips unreadable files too
        if not isinstance(doc, dict):
            continue
        if path.suffix == ".conflist":
            if isinstance(doc.get("plugins"), list) and doc["plugins"]:
                doc.setdefault("cniVersion", "0.4.0")
                return doc
            continue
        if "type" in doc:
            return {"cniVersion": doc.get("cniVersion", "0.4.0"), "name": doc.get("name", path.stem),
                    "plugins": [doc]}
    raise Unavailable(f"no CNI network configuration in {conf_dir}: the pod network is not "
                      "ready (put a .conflist there, or pass --cni-conf-dir)")


def plugin_dir(settings: CNISettings, conflist: dict[str, Any]) -> Path:
    """The first plugin directory that holds every plugin ``conflist`` uses (blocking)."""
    wanted = {str(p.get("type", "")) for p in conflist["plugins"]} | {"loopback"}
    for directory in settings.bin_dirs:
        if all((directory / name).is_file() for name in wanted):
            return directory
    dirs = ", ".join(str(d) for d in settings.bin_dirs)
    raise Unavailable(f"CNI plugins {sorted(wanted)} not all found in {dirs}; install "
                      "containernetworking-plugins or pass --cni-bin-dir")


async def network_ready(settings: CNISettings) -> str:
    """"" when pods can be networked, else why not."""
    try:
        conflist = await trio.to_thread.run_sync(load_conflist, settings.conf_dir)
        await trio.to_thread.run_sync(plugin_dir, settings, conflist)
    except EngineError as e:
        return str(e)
    return ""


def runtime_config(port_mappings: list[dict[str, Any]]) -> dict[str, Any]:
    return {"portMappings": port_mappings} if port_mappings else {}


async def add(settings: CNISettings, sandbox_id: str, netns: Path,
              port_mappings: list[dict[str, Any]], conflist: dict[str, Any] | None = None,
              ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Bring lo up and attach ``eth0`` with ``conflist`` (default: the configured one);
    returns (conflist used, the ADD result)."""
    if conflist is None:
        conflist = await trio.to_thread.run_sync(load_conflist, settings.conf_dir)
    directory = await trio.to_thread.run_sync(plugin_dir, settings, conflist)
    await engine_cni.setup_loopback(netns, plugin_dir=directory)
    result = await engine_cni._add_list(directory, conflist, runtime_config(port_mappings),
                                        container_id=sandbox_id, netns=str(netns), ifname="eth0")
    return conflist, result


async def delete(settings: CNISettings, sandbox_id: str, netns: str, conflist: dict[str, Any],
                 port_mappings: list[dict[str, Any]], result: dict[str, Any] | None) -> list[str]:
    """DEL with the configuration ADD used; returns the plugins' errors (DEL goes on past
    them, and copes with a namespace that is gone)."""
    try:
        directory = await trio.to_thread.run_sync(plugin_dir, settings, conflist)
    except EngineError as e:
        return [str(e)]
    errors = await engine_cni._del_list(directory, conflist, runtime_config(port_mappings), result,
                                        container_id=sandbox_id, netns=netns, ifname="eth0")
    return [str(e) for e in errors]


def first_ips(result: dict[str, Any]) -> list[str]:
    """The addresses of the pod's interface, IPv4 first."""
    addresses = [str(e.get("address", "")).split("/", 1)[0] for e in result.get("ips", [])]
    addresses = [a for a in addresses if a]
    return sorted(addresses, key=lambda a: ":" in a)
