"""The ``local`` volume driver: ``<root>/volumes/<name>/_data``.

Without options the data is a plain directory there. With docker's local options the
directory is a mount point: ``type`` (the filesystem type, ``none`` for a bind), ``device``
(what to mount: a device path, a host directory for ``o=bind``, ``tmpfs`` for a tmpfs) and
``o`` (mount options, comma separated: ``size=64m``, ``bind``, ``uid=1000``...). Such a
volume is mounted when the first running container needs it and unmounted when no running
container does (the engine decides when; this driver only does it).
"""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

import trio

from engine.errors import InvalidArgument, NotFound, RuntimeFailure
from engine.plugin import Availability
from engine.store.du import disk_usage
from engine.store.rmtree import remove_tree

log = logging.getLogger(__name__)

OPTIONS = ("type", "device", "o")
MOUNT_TIMEOUT = 30.0


def _is_mountpoint(path: Path) -> bool:
    where = str(path)
    try:
        with open("/proc/self/mountinfo") as f:
            return any(line.split(" ")[4] == where for line in f)
    except OSError:
        return False


class LocalVolumes:
    name = "local"

    def __init__(self, volumes_dir: Path) -> None:
        self.volumes_dir = volumes_dir

    def availability(self) -> Availability:
        return Availability.yes()

    def data_dir(self, name: str) -> Path:
        if not name or "/" in name or name in (".", ".."):
            raise InvalidArgument(f"invalid volume name {name!r}")
        return self.volumes_dir / name / "_data"

    @staticmethod
    def check_options(options: dict[str, str]) -> None:
        unknown = sorted(set(options) - set(OPTIONS))
        if unknown:
            raise InvalidArgument(f"the local volume driver does not take option(s) "
                                  f"{', '.join(unknown)}; it takes type, device and o")
        if options.get("type") and not options.get("device"):
            raise InvalidArgument("the local volume driver needs device= with type= "
                                  "(device=tmpfs for a tmpfs, a host path for o=bind)")
        if options.get("device") and not options.get("type"):
            raise InvalidArgument("the local volume driver needs type= with device= "
                                  "(type=none o=bind for a bind of a host path)")
        if "bind" in options.get("o", "").split(",") and not Path(options.get("device", "")).is_absolute():
            raise InvalidArgument(f"a bind volume needs an absolute device path, not "
                                  f"{options.get('device')!r}")

    async def create(self, name: str, options: dict[str, str]) -> None:
        self.check_options(options)
        data = self.data_dir(name)
        await trio.to_thread.run_sync(lambda: data.mkdir(mode=0o755, parents=True, exist_ok=True))

    async def remove(self, name: str, options: dict[str, str]) -> None:
        data = self.data_dir(name)
        await self.unmount(name, options)
        if await trio.to_thread.run_sync(_is_mountpoint, data):
            raise RuntimeFailure(f"volume {name} is still mounted at {data}")
        await trio.to_thread.run_sync(lambda: remove_tree(data) if data.exists() else None)

    async def mount(self, name: str, options: dict[str, str]) -> Path:
        data = self.data_dir(name)
        if not await trio.to_thread.run_sync(data.is_dir):
            raise NotFound(f"volume {name} has no data directory {data}; `engctl system check` "
                           "reports it and `--repair` removes the broken volume")
        if not options.get("type") or await trio.to_thread.run_sync(_is_mountpoint, data):
            return data
        argv = ["mount", "-t", options["type"]]
        if options.get("o"):
            argv += ["-o", options["o"]]
        argv += [options["device"], str(data)]
        await self._run(argv, f"mounting volume {name}")
        return data

    async def unmount(self, name: str, options: dict[str, str]) -> None:
        if not options.get("type"):
            return
        data = self.data_dir(name)
        if await trio.to_thread.run_sync(_is_mountpoint, data):
            await self._run(["umount", str(data)], f"unmounting volume {name}")

    async def usage(self, name: str, options: dict[str, str]) -> int:
        data = self.data_dir(name)
        if options.get("type") and not await trio.to_thread.run_sync(_is_mountpoint, data):
            return 0  # a tmpfs or bind not mounted now holds nothing here
        return await trio.to_thread.run_sync(disk_usage, data)

    async def _run(self, argv: list[str], what: str) -> None:
        with trio.move_on_after(MOUNT_TIMEOUT):
            result = await trio.run_process(argv, capture_stdout=True, capture_stderr=True,
                                            check=False, stdin=subprocess.DEVNULL)
            if result.returncode != 0:
                text = result.stderr.decode(errors="replace").strip() or f"exit {result.returncode}"
                raise RuntimeFailure(f"{what} failed: {text}")
            return
        raise RuntimeFailure(f"{what} took longer than {MOUNT_TIMEOUT:g}s")



