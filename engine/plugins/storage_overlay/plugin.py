"""Registration glue: the ``overlay`` storage driver as an ``engine.plugins`` entry point."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.errors import ConfigError
from engine.plugin import Register, hookimpl
from engine.store.layout import Layout

from .driver import DEFAULT_MAX_APPARENT_SIZE, OverlayDriver


@hookimpl
def engine_add_storage_drivers(register: Register, config: dict[str, Any]) -> None:
    """Options (daemon.json ``plugins.overlay``): ``max_apparent_size``, the most bytes one
    layer's files may add up to, sparse files at their full size (default 256 GiB)."""
    layout = Layout(Path(config["root"]), Path(config["run_root"]))
    section = (config.get("plugins") or {}).get("overlay") or {}
    unknown = sorted(set(section) - {"max_apparent_size"})
    if unknown:
        raise ConfigError(f"unknown overlay storage option(s) {', '.join(unknown)} in "
                          "plugins.overlay; known: max_apparent_size")
    limit = section.get("max_apparent_size", DEFAULT_MAX_APPARENT_SIZE)
    if not isinstance(limit, int) or isinstance(limit, bool) or limit <= 0:
        raise ConfigError(f"plugins.overlay.max_apparent_size must be a positive number of "
                          f"bytes, not {limit!r}")
    register.storage_driver(OverlayDriver(layout, max_apparent_size=limit))
