"""A container runs from each pulled test image, under runc and crun."""

from __future__ import annotations

import pytest

from engine.testing.daemon import require_binary
from engine.testing.registry import Registry

from .conftest import BUSYBOX_TAG, MULTI_TAG, DaemonFactory


@pytest.mark.parametrize("runtime", ["runc", "crun"])
def test_containers_run_from_pulled_images(make_daemon: DaemonFactory, seeded: Registry, runtime: str) -> None:
    require_binary(runtime)
    d = make_daemon("--insecure-registry", seeded.host, "--default-runtime", runtime,
                    "--default-network", "none")
    script = {
        BUSYBOX_TAG: ("echo hello from $(busybox | head -1 | cut -d' ' -f1)", b"hello from BusyBox\n"),
        # the whiteout and the opaque directory of the top layer are honoured
        MULTI_TAG: ("cat /data/keep; ls /data /opq", b""),
    }
    for tag in (BUSYBOX_TAG, MULTI_TAG):
        ref = f"{seeded.host}/{tag}"
        with d.client() as c:
            list(c.stream("image.pull", reference=ref))
            cid = c.call("container.create", image=ref, cmd=["sh", "-c", script[tag][0]])["Id"]
            stream = c.stream("container.start", id=cid, attach=True)
            out = b"".join(i["data"] for i in stream)
        assert stream.result["ExitCode"] == 0, out
        if tag == BUSYBOX_TAG:
            assert out == script[tag][1]
        else:
            assert out.startswith(b"kept\n")
            listing = out.decode().split()
            assert "keep" in listing and "gone" not in listing
            assert "c" in listing and "a" not in listing and "b" not in listing
