"""A third-party volume driver in a few lines: each volume a directory under the daemon's
run root, every call written to a log (so a test can see this driver was really used)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from engine.plugin import Availability, hookimpl


class ExtraVolumes:
    name = "extra"

    def __init__(self, base: Path) -> None:
        self.base = base

    def _log(self, *words: str) -> None:
        with open(self.base.parent / "volume-extra.log", "a") as f:
            f.write(" ".join(words) + "\n")

    def availability(self) -> Availability:
        return Availability.yes()

    async def create(self, name: str, options: dict[str, str]) -> None:
        (self.base / name).mkdir(parents=True, exist_ok=True)
        self._log("create", name, *(f"{k}={v}" for k, v in sorted(options.items())))

    async def remove(self, name: str, options: dict[str, str]) -> None:
        shutil.rmtree(self.base / name, ignore_errors=True)
        self._log("remove", name)

    async def mount(self, name: str, options: dict[str, str]) -> Path:
        self._log("mount", name)
        return self.base / name

    async def unmount(self, name: str, options: dict[str, str]) -> None:
        self._log("unmount", name)

    async def usage(self, name: str, options: dict[str, str]) -> int:
        return -1


@hookimpl
def engine_add_volume_drivers(register: Any, config: dict[str, Any]) -> None:
    register.volume_driver(ExtraVolumes(Path(config["run_root"]) / "extra-volumes"))
