"""tag + push + pull back by digest; save -> rmi -> load round trips; import of a rootfs."""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
from pathlib import Path

import pytest

from engine.testing.daemon import Daemon, require_binary
from engine.testing.registry import Registry

from .conftest import MULTI_TAG, DaemonFactory, Layouts
from .e2e_helpers import blob_files, engctl, ok


def test_tag_push_and_pull_back_by_digest(
    make_daemon: DaemonFactory, seeded: Registry, layouts: Layouts
) -> None:
    src = make_daemon("--insecure-registry", seeded.host)
    ok(src, "load", "-i", str(layouts.multilayer))
    local = "localhost/test/multilayer:latest"
    target = f"{seeded.host}/pushed/multi:v2"
    ok(src, "tag", local, target)
    out = ok(src, "push", target).splitlines()
    built = layouts.multilayer_built
    assert out[-1] == f"{target}: digest: {built.manifest.digest}"
    # the registry already held these blobs (under another repository): mounted or present
    assert not any("\x1b[" in line for line in out)

    # the registry serves the very manifest the engine stored, byte for byte
    skopeo = require_binary("skopeo")
    raw = subprocess.run(
        [skopeo, "inspect", "--raw", "--tls-verify=false", f"docker://{target}"],
        capture_output=True, check=True, timeout=60,
    ).stdout
    assert raw == built.manifest.data

    fresh = make_daemon("--insecure-registry", seeded.host)
    by_digest = f"{seeded.host}/pushed/multi@{built.manifest.digest}"
    pulled = ok(fresh, "pull", by_digest).splitlines()
    assert f"Digest: {built.manifest.digest}" in pulled
    (info,) = json.loads(ok(fresh, "image", "inspect", by_digest))
    assert info["Id"] == built.id
    assert info["RepoDigests"] == [by_digest]
    assert info["RepoTags"] == []  # pulled by digest: no tag, docker's behaviour

    refused = engctl(src, "push", by_digest)
    assert refused.code == 125 and "push to a tag" in refused.err
    missing = engctl(src, "push", f"{seeded.host}/not/here:1")
    assert missing.code == 125 and "no such image" in missing.err


@pytest.mark.parametrize("fmt", ["docker-archive", "oci", "oci-archive"])
def test_save_rmi_load_round_trip(
    make_daemon: DaemonFactory, seeded: Registry, layouts: Layouts, tmp_path: Path, fmt: str
) -> None:
    daemon = make_daemon("--insecure-registry", seeded.host)
    ref = f"{seeded.host}/{MULTI_TAG}"
    ok(daemon, "pull", "-q", ref)
    image_id = layouts.multilayer_built.id
    archive = tmp_path / f"saved-{fmt}"
    ok(daemon, "save", "--format", fmt, "-o", str(archive), ref)
    assert archive.is_dir() if fmt == "oci" else tarfile.is_tarfile(archive)

    ok(daemon, "rmi", ref)
    assert ok(daemon, "images", "-q") == ""
    assert blob_files(daemon) == set(), "rmi of the only image frees every blob"

    out = ok(daemon, "load", "-i", str(archive))
    assert out.splitlines() == [f"Loaded image: {ref}"]
    (info,) = json.loads(ok(daemon, "image", "inspect", ref))
    assert info["Id"] == image_id
    assert info["RootFS"]["Layers"] == layouts.multilayer_built.diff_ids


def test_load_refuses_a_missing_or_bogus_input(daemon: Daemon, tmp_path: Path) -> None:
    missing = engctl(daemon, "load", "-i", str(tmp_path / "nope.tar"))
    assert missing.code == 125 and "nope.tar" in missing.err
    bogus = tmp_path / "bogus.tar"
    bogus.write_bytes(b"not a tar at all" * 100)
    result = engctl(daemon, "load", "-i", str(bogus))
    assert result.code == 125 and result.err.startswith("Error: ")
    assert ok(daemon, "images", "-q") == ""


def _rootfs_tar(path: Path) -> None:
    busybox = Path("/bin/busybox").read_bytes()
    with tarfile.open(path, "w:gz") as tar:
        for name, data, mode in (("bin/busybox", busybox, 0o755),
                                 ("etc/motd", b"imported\n", 0o644)):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))


def test_import_a_rootfs_tarball(daemon: Daemon, tmp_path: Path) -> None:
    rootfs = tmp_path / "rootfs.tar.gz"
    _rootfs_tar(rootfs)
    out = ok(daemon, "import", "-c", "CMD [\"/bin/busybox\", \"cat\", \"/etc/motd\"]",
             "-c", "ENV FOO=bar", "-m", "from a tarball", str(rootfs), "imported/fs:v1")
    image_id = out.strip()
    assert image_id.startswith("sha256:") and len(image_id) == 71
    (info,) = json.loads(ok(daemon, "image", "inspect", "imported/fs:v1"))
    assert info["Id"] == image_id
    assert info["Config"]["Cmd"] == ["/bin/busybox", "cat", "/etc/motd"]
    assert "FOO=bar" in info["Config"]["Env"]
    assert len(info["RootFS"]["Layers"]) == 1
    history = ok(daemon, "history", "imported/fs:v1")
    assert "from a tarball" in history

    untagged = ok(daemon, "import", str(rootfs)).strip()
    assert untagged.startswith("sha256:")
    assert untagged[7:19] in ok(daemon, "images", "-q", "--filter", "dangling=true").split()
