"""Registers the ``local`` volume driver."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.plugin import hookimpl

from .driver import LocalVolumes


@hookimpl
def engine_add_volume_drivers(register: Any, config: dict[str, Any]) -> None:
    register.volume_driver(LocalVolumes(Path(config["root"]) / "volumes"))
