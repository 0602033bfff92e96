"""runc, driven through conmon (everything but the name comes from ``CLIRuntime``)."""

from __future__ import annotations

from pathlib import Path

from engine.oci.cli_runtime import CLIRuntime
from engine.store.layout import Layout


class RuncRuntime(CLIRuntime):
    """``runc`` with its state under ``state_root`` (``--root``) and cgroupfs cgroups."""

    def __init__(
        self,
        state_root: Path,
        binary: str = "runc",
        *,
        name: str = "runc",
        extra_global_args: list[str] | None = None,
    ) -> None:
        super().__init__(name, binary, state_root, extra_global_args=extra_global_args)

    @classmethod
    def from_layout(cls, layout: Layout) -> RuncRuntime:
        return cls(layout.runtime_state_dir("runc"))
