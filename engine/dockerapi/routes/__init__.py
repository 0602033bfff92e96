"""The Docker API's routes, one module per noun."""

from __future__ import annotations

from engine.dockerapi.server import DockerAPI, Router, json_response
from engine.errors import NotFound, NotImplementedByEngine
from engine.httpserver import Request, Response

# Docker API endpoints this engine does not serve yet: a 501 that says so, rather than a 404
# that reads like a typo in the client.
NOT_YET = [
    ("POST", "/session"),
    ("GET", "/images/search"),
    ("GET", "/containers/{id}/attach/ws"),
    ("PUT", "/volumes/{name}"), ("GET", "/swarm"), ("GET", "/nodes"), ("GET", "/services"),
    ("GET", "/tasks"), ("GET", "/secrets"), ("GET", "/configs"), ("GET", "/distribution/{name:path}/json"),
]


async def not_served_yet(api: DockerAPI, req: Request) -> Response:
    raise NotImplementedByEngine(f"{req.method} {req.path} is not served by engine's Docker API yet")


# Kinds of objects the engine has none of (yet): lookups answer 404 and lists are empty, so
# clients that probe every kind (docker inspect NAME) go on to the next.
async def no_plugins(api: DockerAPI, req: Request) -> Response:
    return json_response([])


async def no_such_object(api: DockerAPI, req: Request) -> Response:
    kind = req.path.strip("/").split("/")[0].rstrip("s")
    raise NotFound(f"no such {kind}: {req.path_params['name']}")


def build_router() -> Router:
    from engine.dockerapi.routes import build as build_routes
    from engine.dockerapi.routes import containers, execs, images, networks, system, verbs, volumes

    router = Router()
    for module in (system, images, containers, verbs, execs, networks, volumes, build_routes):
        module.register(router)
    router.route("GET", "/plugins")(no_plugins)
    router.route("GET", "/plugins/{name:path}/json")(no_such_object)
    for method, template in NOT_YET:  # after the served routes: those win
        router.route(method, template)(not_served_yet)
    return router
