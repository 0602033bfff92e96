"""Registration glue for the crun runtime (no I/O at import)."""

from __future__ import annotations

from typing import Any

from engine.oci.cli_runtime import runtime_from_config
from engine.plugin import Register, hookimpl
from engine.plugins.crun.runtime import CrunRuntime


def build_runtime(
    config: dict[str, Any], *, name: str = "crun", extra_global_args: list[str] | None = None
) -> CrunRuntime:
    """A crun runtime for the daemon ``config``; ``name`` and ``extra_global_args`` let another
    plugin register a variant of crun (its state then lives in its own ``runtimes/<name>``)."""
    return runtime_from_config(
        CrunRuntime, config, plugin="crun", name=name, extra_global_args=extra_global_args
    )


@hookimpl
def engine_add_runtimes(register: Register, config: dict[str, Any]) -> None:
    register.runtime(build_runtime(config))
