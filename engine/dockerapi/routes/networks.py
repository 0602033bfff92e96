"""Networks: list, inspect, create, remove, connect, disconnect, prune.

The same network store calls and events as the RPC's ``network.*`` handlers, and the same
docker-shaped views (``engine.api.networks``)."""

from __future__ import annotations

from typing import Any

import attrs

from engine.api.networks import _check_filters, _matches
from engine.api.networks import inspect as network_inspect
from engine.api.networks import summary as network_summary
from engine.dockerapi.messages import network_exists, no_such_network
from engine.dockerapi.routes.containers import requested_ip
from engine.dockerapi.server import DockerAPI, Router, json_response, no_content
from engine.dockerapi.shapes import parse_filters, refuse_unsupported, str_list, str_map
from engine.errors import InvalidArgument, NotFound, PermissionDenied
from engine.httpserver import Request, Response
from engine.network.networks import DEFAULT_NETWORK, Network
from engine.network.service import ContainerNetworking
from engine.supervisor.container_service import ContainerService
from engine.supervisor.containers import settle_removals

CREATE_HANDLED = {"Name", "Driver", "Internal", "IPAM", "Labels"}
CREATE_IGNORED = {"CheckDuplicate", "Attachable", "Scope", "ConfigOnly", "ConfigFrom", "Ingress"}


def register(router: Router) -> None:
    router.route("GET", "/networks")(list_networks)
    router.route("POST", "/networks/create")(create)
    router.route("POST", "/networks/prune")(prune)
    router.route("GET", "/networks/{id}")(inspect)
    router.route("DELETE", "/networks/{id}")(remove)
    router.route("POST", "/networks/{id}/connect")(connect)
    router.route("POST", "/networks/{id}/disconnect")(disconnect)


NONE_MODE_CONNECT = "container cannot be connected to multiple networks with one of the networks in private (none) mode"


def networking(api: DockerAPI) -> ContainerNetworking:
    net = api.app.services.network
    if net is None:
        raise NotFound("networking is not available in this daemon")
    return net


def _docker_view(doc: dict[str, Any], net: Network) -> dict[str, Any]:
    if doc["Name"] != DEFAULT_NETWORK:
        # dockerd lists only the options a network was created with, and docker-compose
        # recreates a network whose options differ from its file's
        doc["Options"] = dict(net.options)
    doc.setdefault("Containers", {})
    doc.setdefault("ConfigOnly", False)
    doc.setdefault("ConfigFrom", {"Network": ""})
    return doc


async def list_networks(api: DockerAPI, req: Request) -> Response:
    filters = parse_filters(req.param("filters"))
    _check_filters(filters)
    nets = await networking(api).store.list()
    hidden = DEFAULT_NETWORK if _default_network_unused(api) else None
    return json_response([_docker_view(network_summary(n), n) for n in nets
                          if _matches(n, filters) and n.name != hidden])


def _default_network_unused(api: DockerAPI) -> bool:
    """Under ``--default-network none`` the engine's predefined bridge is listed only once
    a container asked for it by name: dockerd without a default bridge lists none."""
    if api.app.config.default_network != "none":
        return False
    containers = api.app.services.containers
    actors = containers.actors.values() if containers is not None else []
    return not any(a.config.network_mode == DEFAULT_NETWORK or DEFAULT_NETWORK in a.config.networks
                   for a in actors)


async def inspect(api: DockerAPI, req: Request) -> Response:
    svc = networking(api)
    with no_such_network(req.path_params["id"]):
        net = await svc.store.get(req.path_params["id"])
    await settle_removals(api.app)  # a `run --rm` that answered a moment ago is not listed in Containers
    return json_response(_docker_view(await network_inspect(svc, net), net))


@attrs.frozen
class _Ipam:
    subnet: str = ""
    gateway: str = ""
    ip_range: str = ""
    aux_addresses: dict[str, str] = attrs.field(factory=dict)


def _ipam(doc: Any) -> _Ipam:
    """IPAM.Config: at most one IPv4 subnet with its gateway, ip range and auxiliary
    addresses."""
    if not doc:
        return _Ipam()
    refuse_unsupported("IPAM", doc, {"Driver", "Config"}, {"Options"})
    if str(doc.get("Driver") or "default") != "default":
        raise InvalidArgument(f"IPAM.Driver {doc['Driver']!r} is not supported by engine (default is)")
    configs = doc.get("Config") or []
    if len(configs) > 1:
        raise InvalidArgument("IPAM.Config: engine networks have one subnet")
    if not configs:
        return _Ipam()
    config = configs[0]
    refuse_unsupported("IPAM.Config[0]", config, {"Subnet", "Gateway", "IPRange", "AuxiliaryAddresses"}, set())
    return _Ipam(str(config.get("Subnet") or ""), str(config.get("Gateway") or ""),
                 str(config.get("IPRange") or ""),
                 str_map(config.get("AuxiliaryAddresses"), "IPAM.Config[0].AuxiliaryAddresses"))


# dockerd's predefined networks engine has too (its bridge is engine's own, removable or not
# by engine's rules)
PREDEFINED = ("none", "host")


async def create(api: DockerAPI, req: Request) -> Response:
    doc = await req.json_object()
    name = str(doc.get("Name") or "")
    if not name:
        raise InvalidArgument("Name is required")
    if name in PREDEFINED:
        raise PermissionDenied(f"operation is not permitted on predefined {name} network", http_status=403)
    refuse_unsupported("NetworkCreate", doc, CREATE_HANDLED | {"Options", "EnableIPv6"}, CREATE_IGNORED)
    if doc.get("EnableIPv6"):
        raise InvalidArgument("EnableIPv6 is not supported by engine (its networks are IPv4)")
    options = str_map(doc.get("Options"), "Options")  # engine.network.options checks them
    driver = str(doc.get("Driver") or "bridge")
    if driver != "bridge":
        raise InvalidArgument(f"network driver {driver!r} is not supported; use bridge")
    ipam = _ipam(doc.get("IPAM"))
    if ipam.gateway and not ipam.subnet:
        raise InvalidArgument("IPAM.Config[0].Gateway needs a Subnet")
    with network_exists(name):
        net = await networking(api).store.create(name, subnet=ipam.subnet or None, gateway=ipam.gateway or None,
                                                 internal=bool(doc.get("Internal")),
                                                 labels=str_map(doc.get("Labels"), "Labels"),
                                                 options=options, ip_range=ipam.ip_range,
                                                 aux_addresses=ipam.aux_addresses)
    api.app.events.emit("network", "create", net.id, name=net.name, driver="bridge")
    return json_response({"Id": net.id, "Warning": ""}, 201)


async def remove(api: DockerAPI, req: Request) -> Response:
    svc = networking(api)
    with no_such_network(req.path_params["id"]):
        net = await svc.store.get(req.path_params["id"])
    if net.is_pseudo and net.name in PREDEFINED:
        raise PermissionDenied(f"{net.name} is a pre-defined network and cannot be removed", http_status=403)
    await settle_removals(api.app)
    await svc.store.remove(net.id if not net.is_pseudo else net.name)
    api.app.events.emit("network", "destroy", net.id, name=net.name, driver="bridge")
    return no_content()


async def prune(api: DockerAPI, req: Request) -> Response:
    from engine.supervisor.system import network_filter

    match = network_filter(parse_filters(req.param("filters")))  # until (a duration too), label, label!
    await settle_removals(api.app)
    removed = await networking(api).store.prune(match)
    for name in removed:
        api.app.events.emit("network", "destroy", name, name=name, driver="bridge")
    return json_response({"NetworksDeleted": removed or None})


async def connect(api: DockerAPI, req: Request) -> Response:
    doc = await req.json_object()
    container = str(doc.get("Container") or "")
    if not container:
        raise InvalidArgument("Container is required")
    endpoint = doc.get("EndpointConfig") or {}
    # MacAddress is a create's only (refused by name here, not dropped)
    refuse_unsupported("EndpointConfig", endpoint, {"Aliases", "IPAMConfig"},
                       {"NetworkID", "EndpointID", "Gateway", "IPAddress", "IPPrefixLen",
                        "DNSNames", "Links"})
    with no_such_network(req.path_params["id"]):
        net = await networking(api).store.get(req.path_params["id"])
    aliases = str_list(endpoint.get("Aliases"), "EndpointConfig.Aliases") or []
    ip = requested_ip(endpoint, "EndpointConfig")
    config = ContainerService(api.app).get(container).config
    if config.network_mode == "none" and not config.network_defaulted:  # an explicit --network none
        raise InvalidArgument(NONE_MODE_CONNECT)  # dockerd's words and status
    await ContainerService(api.app).connect(container, net.name, aliases, ip)
    return no_content(200)


async def disconnect(api: DockerAPI, req: Request) -> Response:
    doc = await req.json_object()
    container = str(doc.get("Container") or "")
    if not container:
        raise InvalidArgument("Container is required")
    with no_such_network(req.path_params["id"]):
        net = await networking(api).store.get(req.path_params["id"])
    await ContainerService(api.app).disconnect(container, net.name, force=bool(doc.get("Force")))
    return no_content(200)
