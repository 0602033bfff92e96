"""A third-party runtime plugin in a few lines: runc, with an extra global flag that makes it
log every invocation to a file (so a test can see this plugin was really used)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.plugin import hookimpl
from engine.plugins.runc.plugin import build_runtime


@hookimpl
def engine_add_runtimes(register: Any, config: dict[str, Any]) -> None:
    log_file = Path(config["run_root"]) / "runc-extra.log"
    runtime = build_runtime(config, name="runc-extra", extra_global_args=["--debug", "--log", str(log_file)])
    register.runtime(runtime)
