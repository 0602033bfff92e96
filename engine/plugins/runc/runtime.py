"""runc, driven through conmon (everything but the name and the start comes from
``CLIRuntime``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

from engine.oci import exec_fifo
from engine.oci.cli_runtime import CLIRuntime
from engine.plugin import Created, CreateRequest
from engine.store.layout import Layout


class RuncRuntime(CLIRuntime):
    """``runc`` with its state under ``state_root`` (``--root``) and cgroupfs cgroups.

    ``start`` of a container this daemon just created releases it through runc's exec fifo
    (see ``engine.oci.exec_fifo``) instead of spawning ``runc start``; any other start
    (after a daemon restart, or a variant with its own ``--root``) runs ``runc start``."""

    def __init__(
        self,
        state_root: Path,
        binary: str = "runc",
        *,
        name: str = "runc",
        extra_global_args: list[str] | None = None,
    ) -> None:
        super().__init__(name, binary, state_root, extra_global_args=extra_global_args)
        self._created_init_pids: dict[str, int] = {}
        self._own_state_root = not any(a.startswith("--root") for a in self.extra_global_args)

    @classmethod
    def from_layout(cls, layout: Layout) -> RuncRuntime:
        return cls(layout.runtime_state_dir("runc"))

    async def create_when_ready(
        self, request: CreateRequest, prepare_bundle: Callable[[], Awaitable[None]] | None
    ) -> Created:
        created = await super().create_when_ready(request, prepare_bundle)
        if self._own_state_root:
            self._created_init_pids[request.container_id] = created.container_pid
        return created

    async def start(self, container_id: str) -> None:
        init_pid = self._created_init_pids.pop(container_id, None)
        if init_pid is not None and await exec_fifo.release_created(
            self.state_root / container_id, init_pid
        ):
            return
        await super().start(container_id)

    async def delete(self, container_id: str, *, force: bool = False) -> None:
        self._created_init_pids.pop(container_id, None)
        await super().delete(container_id, force=force)
