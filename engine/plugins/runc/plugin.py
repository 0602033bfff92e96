"""Registration glue for the runc runtime (no I/O at import)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.plugin import Register, hookimpl
from engine.plugins.runc.runtime import RuncRuntime
from engine.store.layout import Layout


def build_runtime(
    config: dict[str, Any], *, name: str = "runc", extra_global_args: list[str] | None = None
) -> RuncRuntime:
    """A runc runtime for the daemon ``config`` (``root``, ``run_root``, ``plugins.runc``).

    ``name`` and ``extra_global_args`` let another plugin register a variant of runc; its
    state then lives in its own ``runtimes/<name>`` dir."""
    layout = Layout(Path(config["root"]), Path(config["run_root"]))
    section = (config.get("plugins") or {}).get("runc") or {}
    return RuncRuntime(
        layout.runtime_state_dir(name),
        str(section.get("binary", "runc")),
        name=name,
        extra_global_args=extra_global_args,
    )


@hookimpl
def engine_add_runtimes(register: Register, config: dict[str, Any]) -> None:
    register.runtime(build_runtime(config))
