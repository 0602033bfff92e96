"""The Docker API's routes, one module per noun."""

from __future__ import annotations

from engine.dockerapi.server import Router


def build_router() -> Router:
    from engine.dockerapi.routes import containers, execs, images, networks, system

    router = Router()
    for module in (system, images, containers, execs, networks):
        module.register(router)
    return router
