"""Registration glue for the crun runtime (no I/O at import)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.plugin import Register, hookimpl
from engine.plugins.crun.runtime import CrunRuntime
from engine.store.layout import Layout


@hookimpl
def engine_add_runtimes(register: Register, config: dict[str, Any]) -> None:
    layout = Layout(Path(config["root"]), Path(config["run_root"]))
    section = (config.get("plugins") or {}).get("crun") or {}
    register.runtime(CrunRuntime(layout.runtime_state_dir("crun"), section.get("binary", "crun")))
