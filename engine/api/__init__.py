"""RPC handlers, one module per noun. Each module has ``register(table)``."""

from __future__ import annotations

from engine.rpc.methods import MethodTable


def register_all(table: MethodTable) -> None:
    from engine.api import build, container_verbs, containers, images, networks, system, volumes

    system.register(table)
    containers.register(table)
    container_verbs.register(table)
    images.register(table)
    networks.register(table)
    volumes.register(table)
    build.register(table)
