"""Registration glue: the ``overlay`` storage driver as an ``engine.plugins`` entry point."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.plugin import Register, hookimpl
from engine.store.layout import Layout

from .driver import OverlayDriver


@hookimpl
def engine_add_storage_drivers(register: Register, config: dict[str, Any]) -> None:
    layout = Layout(Path(config["root"]), Path(config["run_root"]))
    register.storage_driver(OverlayDriver(layout))
