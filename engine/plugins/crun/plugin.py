"""Registration glue for the crun runtime (no I/O at import)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.plugin import Register, hookimpl
from engine.plugins.crun.runtime import CrunRuntime
from engine.store.layout import Layout


def build_runtime(
    config: dict[str, Any], *, name: str = "crun", extra_global_args: list[str] | None = None
) -> CrunRuntime:
    """A crun runtime for the daemon ``config`` (``root``, ``run_root``, ``plugins.crun``).

    ``name`` and ``extra_global_args`` let another plugin register a variant of crun; its
    state then lives in its own ``runtimes/<name>`` dir."""
    layout = Layout(Path(config["root"]), Path(config["run_root"]))
    section = (config.get("plugins") or {}).get("crun") or {}
    return CrunRuntime(
        layout.runtime_state_dir(name),
        str(section.get("binary", "crun")),
        name=name,
        extra_global_args=extra_global_args,
    )


@hookimpl
def engine_add_runtimes(register: Register, config: dict[str, Any]) -> None:
    register.runtime(build_runtime(config))
