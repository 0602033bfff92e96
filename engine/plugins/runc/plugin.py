"""Registration glue for the runc runtime (no I/O at import)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.plugin import Register, hookimpl
from engine.plugins.runc.runtime import RuncRuntime
from engine.store.layout import Layout


@hookimpl
def engine_add_runtimes(register: Register, config: dict[str, Any]) -> None:
    layout = Layout(Path(config["root"]), Path(config["run_root"]))
    section = (config.get("plugins") or {}).get("runc") or {}
    register.runtime(RuncRuntime(layout.runtime_state_dir("runc"), section.get("binary", "runc")))
