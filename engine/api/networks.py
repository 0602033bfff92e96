"""network.* methods: create, list, inspect, remove, prune, connect, disconnect.

Shapes follow docker's network API (``NetworkResource``), so the CLI and SDK users see the
fields they know: Name, Id, Created, Scope, Driver, IPAM, Internal, Containers, Labels.
"""

from __future__ import annotations

from typing import Any

import attrs

from engine.actors.model import iso_time
from engine.errors import InvalidArgument, NotFound, Unavailable
from engine.network.networks import DEFAULT_NETWORK, Network
from engine.network.service import ContainerNetworking
from engine.rpc.methods import MethodTable
from engine.rpc.server import CallContext
from engine.supervisor.container_service import ContainerService
from engine.supervisor.containers import settle_removals

_FILTERS = {"name", "id", "driver", "label", "type"}


@attrs.frozen
class CreateParams:
    name: str
    subnet: str = ""
    gateway: str = ""
    internal: bool = False
    labels: dict[str, str] = attrs.field(factory=dict)
    driver: str = "bridge"
    options: dict[str, str] = attrs.field(factory=dict)  # -o: docker's driver options
    ip_range: str = ""
    aux_addresses: dict[str, str] = attrs.field(factory=dict)


@attrs.frozen
class RefParams:
    id: str


@attrs.frozen
class ListParams:
    filters: dict[str, list[str]] = attrs.field(factory=dict)


@attrs.frozen
class PruneParams:
    filters: dict[str, list[str]] = attrs.field(factory=dict)  # until, label, label!


@attrs.frozen
class ConnectParams:
    network: str
    container: str
    aliases: list[str] = attrs.field(factory=list)
    ip: str = ""  # --ip: the container's IPv4 address on the network


@attrs.frozen
class DisconnectParams:
    network: str
    container: str
    force: bool = False


def service(ctx: CallContext) -> ContainerNetworking:
    net = ctx.app.services.network
    if net is None:
        raise NotFound("networking is not available in this daemon")
    return net


def _driver(net: Network) -> str:
    return net.driver


def summary(net: Network) -> dict[str, Any]:
    config: list[dict[str, Any]] = [{"Subnet": net.subnet, "Gateway": net.gateway}] if net.subnet else []
    if config and net.ip_range:
        config[0]["IPRange"] = net.ip_range
    if config and net.aux_addresses:
        config[0]["AuxiliaryAddresses"] = dict(net.aux_addresses)
    return {
        "Name": net.name,
        "Id": net.id,
        "Created": iso_time(net.created),
        "Scope": "local",
        "Driver": _driver(net),
        "EnableIPv6": False,
        "IPAM": {"Driver": "default", "Options": {}, "Config": config},
        "Internal": net.internal,
        "Attachable": not net.is_pseudo,
        "Ingress": False,
        # the options it was created with, and always its bridge's name (engine's view;
        # the Docker API's shows dockerd's: the options given)
        "Options": {**net.options, "com.docker.network.bridge.name": net.bridge} if net.bridge else {},
        "Labels": dict(net.labels),
    }


async def inspect(svc: ContainerNetworking, net: Network) -> dict[str, Any]:
    result = summary(net)
    containers: dict[str, Any] = {}
    if not net.is_pseudo:
        for att in await svc.attached(net):
            mac = ""
            for iface in (att.result or {}).get("interfaces", []):
                if iface.get("name") == att.ifname and iface.get("sandbox"):
                    mac = str(iface.get("mac", ""))
            prefix = _prefix_of(att.result or {})
            containers[att.container_id] = {
                "Name": _container_name(svc, att.container_id, att.name),
                "EndpointID": f"{att.container_id[:12]}.{att.ifname}",
                "MacAddress": mac,
                "IPv4Address": f"{att.ip}/{prefix}" if att.ip else "",
                "IPv6Address": "",
                "Aliases": list(att.aliases),
            }
    result["Containers"] = containers
    return result


def _prefix_of(result: dict[str, Any]) -> int:
    for entry in result.get("ips", []):
        addr, _, prefix = str(entry.get("address", "")).partition("/")
        if addr and ":" not in addr:
            return int(prefix or 32)
    return 32


def _container_name(svc: ContainerNetworking, container_id: str, recorded: str) -> str:
    try:
        return str(svc.containers().get(container_id).name)
    except (NotFound, Unavailable):
        return recorded


def _check_filters(filters: dict[str, list[str]]) -> None:
    unknown = set(filters) - _FILTERS
    if unknown:
        raise InvalidArgument(
            f"unknown filter {', '.join(sorted(unknown))}; use {', '.join(sorted(_FILTERS))}"
        )
    for value in filters.get("type", []):
        if value not in ("builtin", "custom"):
            raise InvalidArgument(f"invalid filter type={value!r}: use builtin or custom")


def _matches(net: Network, filters: dict[str, list[str]]) -> bool:
    for key, values in filters.items():
        if key == "name" and not any(v in net.name for v in values):
            return False
        if key == "id" and not any(net.id.startswith(v) for v in values):
            return False
        if key == "driver" and _driver(net) not in values:
            return False
        if key == "type":
            kind = "builtin" if net.is_pseudo or net.name == DEFAULT_NETWORK else "custom"
            if kind not in values:
                return False
        if key == "label":
            for v in values:
                k, sep, want = v.partition("=")
                if k not in net.labels or (sep and net.labels[k] != want):
                    return False
    return True


def register(table: MethodTable) -> None:
    @table.method("network.create", params=CreateParams)
    async def create(ctx: CallContext, p: CreateParams) -> dict[str, Any]:
        """Create a bridge network (docker network create)."""
        if p.driver not in ("bridge", ""):
            raise InvalidArgument(f"network driver {p.driver!r} is not supported; use bridge")
        if p.gateway and not p.subnet:
            raise InvalidArgument("--gateway needs --subnet (the gateway must lie in a known subnet)")
        net = await service(ctx).store.create(
            p.name, subnet=p.subnet or None, gateway=p.gateway or None,
            internal=p.internal, labels=dict(p.labels), options=dict(p.options),
            ip_range=p.ip_range, aux_addresses=dict(p.aux_addresses),
        )
        ctx.app.events.emit("network", "create", net.id, name=net.name, driver="bridge")
        return {"Id": net.id, "Warning": ""}

    @table.method("network.list", params=ListParams)
    async def list_(ctx: CallContext, p: ListParams) -> list[dict[str, Any]]:
        """List networks (docker network ls), optionally filtered."""
        _check_filters(p.filters)
        nets = await service(ctx).store.list()
        return [summary(n) for n in nets if _matches(n, p.filters)]

    @table.method("network.inspect", params=RefParams)
    async def inspect_(ctx: CallContext, p: RefParams) -> dict[str, Any]:
        """One network with its attached (running) containers."""
        svc = service(ctx)
        return await inspect(svc, await svc.store.get(p.id))

    @table.method("network.remove", params=RefParams)
    async def remove(ctx: CallContext, p: RefParams) -> dict[str, Any]:
        """Remove a network; refused (Conflict) while containers are attached."""
        svc = service(ctx)
        net = await svc.store.get(p.id)
        await settle_removals(ctx.app)
        await svc.store.remove(net.id if not net.is_pseudo else net.name)
        ctx.app.events.emit("network", "destroy", net.id, name=net.name, driver="bridge")
        return {"Id": net.id, "Name": net.name}

    @table.method("network.prune", params=PruneParams)
    async def prune(ctx: CallContext, p: PruneParams) -> dict[str, Any]:
        """Remove every user-defined network no container is attached to."""
        from engine.supervisor.system import network_filter

        await settle_removals(ctx.app)
        removed = await service(ctx).store.prune(network_filter(p.filters))
        for name in removed:
            ctx.app.events.emit("network", "destroy", name, name=name, driver="bridge")
        return {"NetworksDeleted": removed}

    @table.method("network.connect", params=ConnectParams)
    async def connect(ctx: CallContext, p: ConnectParams) -> dict[str, Any]:
        """Connect a container to a network (live if it runs, and at every start)."""
        await ContainerService(ctx.app).connect(p.container, p.network, list(p.aliases), p.ip)
        return {}

    @table.method("network.disconnect", params=DisconnectParams)
    async def disconnect(ctx: CallContext, p: DisconnectParams) -> dict[str, Any]:
        """Disconnect a container from a network."""
        await ContainerService(ctx.app).disconnect(p.container, p.network, force=p.force)
        return {}
