"""A local CNCF distribution registry (Debian's docker-registry) on 127.0.0.1, plain HTTP."""

from __future__ import annotations

import subprocess
import urllib.request
from pathlib import Path

import attrs

from engine.testing.procs import free_port, stop_pid, wait_until

REGISTRY_BIN = "/usr/bin/docker-registry"

CONFIG = """\
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {root}
  delete:
    enabled: true
  redirect:
    disable: true
http:
  addr: {addr}
"""


@attrs.define
class Registry:
    base: Path
    port: int = attrs.field(factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.addr}/v2/", timeout=1) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def start(self) -> Registry:
        if not Path(REGISTRY_BIN).exists():
            raise RuntimeError(f"{REGISTRY_BIN} is missing: apt-get install docker-registry")
        self.base.mkdir(parents=True, exist_ok=True)
        config = self.base / "config.yml"
        config.write_text(CONFIG.format(root=self.base / "storage", addr=self.addr))
        log = open(self.base / "registry.log", "ab")
        self.proc = subprocess.Popen([REGISTRY_BIN, "serve", str(config)], stdout=log, stderr=log,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        if not wait_until(self._answers, 15):
            self.stop()
            raise RuntimeError(f"the registry did not answer on {self.addr}; see {self.base}/registry.log")
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_pid(self.proc.pid, 10)
            self.proc.wait(5)
            self.proc = None
