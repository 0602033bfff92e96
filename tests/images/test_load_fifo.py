"""`load -i <fifo>` (issue 16.10) against a real engined: an archive written into a named
pipe loads, and a daemon told to stop while it waits on a pipe nobody writes exits."""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from pathlib import Path

from engine.errors import EngineError
from engine.testing.daemon import Daemon
from engine.testing.images import busybox_image, write_docker_archive


def test_an_archive_from_a_fifo_loads(daemon: Daemon, tmp_path: Path) -> None:
    archive = tmp_path / "busybox.tar"
    write_docker_archive(archive, [busybox_image()])
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)

    def writer() -> None:
        with open(fifo, "wb") as out, open(archive, "rb") as src:
            shutil.copyfileobj(src, out)

    feeder = threading.Thread(target=writer)
    feeder.start()
    loaded = daemon.call("image.load", path=str(fifo))
    feeder.join(30)
    assert loaded and any("busybox" in t for img in daemon.call("image.list") for t in img["RepoTags"])


def test_sigterm_while_loading_from_an_idle_fifo_exits(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    d = Daemon()
    d.start()
    try:
        outcome: dict[str, object] = {}

        def load() -> None:
            try:
                outcome["result"] = d.call("image.load", path=str(fifo))
            except (EngineError, OSError) as e:
                outcome["error"] = e

        caller = threading.Thread(target=load, daemon=True)
        caller.start()
        time.sleep(1.0)  # the daemon is now waiting on the pipe
        assert d.call("system.ping") == "pong"  # and still serving meanwhile
        assert d.proc is not None
        started = time.monotonic()
        d.proc.send_signal(signal.SIGTERM)
        code = d.proc.wait(30)  # raises TimeoutExpired if the daemon hangs
        assert time.monotonic() - started < 20
        assert code == 0, d.log()
        caller.join(10)
        assert "result" not in outcome  # nothing was loaded from a pipe nobody wrote
    finally:
        d.cleanup()
