"""Several clients pulling the same image at once: all succeed, one image results."""

from __future__ import annotations

import threading

from engine.testing.daemon import Daemon
from engine.testing.registry import Registry

from .conftest import BUSYBOX_TAG


def test_concurrent_pulls_of_one_image_all_succeed(daemon: Daemon, seeded: Registry) -> None:
    ref = f"{seeded.host}/{BUSYBOX_TAG}"
    results: list[str] = []
    errors: list[BaseException] = []

    def pull() -> None:
        try:
            with daemon.client() as c:
                stream = c.stream("image.pull", reference=ref)
                list(stream)
                results.append(stream.result["Id"])
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=pull) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert len(results) == 6 and len(set(results)) == 1
    assert [i["Id"] for i in daemon.call("image.list")] == results[:1]
