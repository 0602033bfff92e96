"""Fixtures for volume tests: a real engined (runc, no networking) with busybox and an image
that has content (owned by 1234:2345) at /data and a ``VOLUME /anon``."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from engine.testing.daemon import Daemon, require_binary
from engine.testing.images import TestImage, busybox_rootfs_layer, write_docker_archive

SEEDED = "localhost/test/seeded:latest"


def data_layer() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, mode, data in (
            ("data", tarfile.DIRTYPE, 0o750, b""),
            ("data/hello", tarfile.REGTYPE, 0o640, b"from the image\n"),
            ("data/sub", tarfile.DIRTYPE, 0o700, b""),
            ("data/sub/deep", tarfile.REGTYPE, 0o600, b"deep\n"),
            ("anon", tarfile.DIRTYPE, 0o755, b""),
            ("anon/seed", tarfile.REGTYPE, 0o644, b"anon seed\n"),
        ):
            info = tarfile.TarInfo(name)
            info.type = kind
            info.mode = mode
            info.uid, info.gid = 1234, 2345
            info.mtime = 1_600_000_000
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data else None)
    return buf.getvalue()


def seeded_image() -> TestImage:
    return TestImage(name=SEEDED, layers=[busybox_rootfs_layer(), data_layer()],
                     config_extra={"Volumes": {"/anon": {}}})


@pytest.fixture(scope="session")
def images_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from engine.testing.images import busybox_image

    path = tmp_path_factory.mktemp("images") / "images.tar"
    write_docker_archive(path, [busybox_image(), seeded_image()])
    return path


def start_engine(archive: Path, **kwargs: Any) -> Daemon:
    require_binary("runc")
    require_binary("conmon")
    extra = kwargs.pop("extra_args", [])
    d = Daemon(extra_args=["--default-runtime", "runc", "--default-network", "none", *extra], **kwargs)
    d.start()
    d.call("image.load", path=str(archive))
    return d


@pytest.fixture
def engine(images_archive: Path) -> Iterator[Daemon]:
    d = start_engine(images_archive)
    try:
        yield d
    finally:
        d.cleanup()


def run(d: Daemon, image: str = "busybox", **params: Any) -> tuple[int, bytes, bytes, str]:
    """An attached run: exit code, stdout, stderr and the container's id."""
    with d.client() as c:
        cid = c.call("container.create", {"image": image, **params})["Id"]
        stream = c.stream("container.start", id=cid, attach=True)
        out, err = b"", b""
        for item in stream:
            if item["stream"] == "stderr":
                err += item["data"]
            else:
                out += item["data"]
        return stream.result["ExitCode"], out, err, cid
